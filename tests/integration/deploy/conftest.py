"""The deploy loop's parts as real processes: a registry with trained versions, the controller, an agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from edgeqat.deploy.demo_loop import ensure_controller
from edgeqat.stack.processes import free_port, stop_server
from edgeqat.stack.stack import StackPaths
from edgeqat.stack.webhook import load_webhook_secret, register_deploy_webhook
from tests.unit.agent.helpers import agent_command  # the agent with torch, mlflow, ... unimportable

TINY_QAT = ["data=digits", "data.image_size=16", "model=resnet18", "model.name=test_resnet", "quant=qat_int8",
            "quant.qat_epochs=1", "quant.benchmark_resolutions=[]", "quant.latency_iters=5", "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false", "tracking.experiment_name=deploy-loop"]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 90.0, every_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # noqa: BLE001 - not there yet
            last = e
        else:
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Loop:
    """One registry + controller + agent setup shared by a module's tests (they run in file order)."""

    tracking_uri: str
    env: dict[str, str]
    home: Path
    target_file: Path
    target: str
    publish: str
    agent_home: Path
    port: int
    secret: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_controller(self, poll_interval_s: float) -> None:
        """``edgeqat deploy serve`` as ``edgeqat demo`` starts it (pid file, health check, log under home)."""
        ensure_controller(self.home, self.env, self.port, poll_interval_s=poll_interval_s,
                          extra_args=("--target", str(self.target_file), "--tracking-uri", self.tracking_uri))

    def stop_controller(self) -> None:
        stop_server(StackPaths.at(self.home).pid("deploy"))

    def start_agent(self) -> None:
        log = open(self.home / "agent.log", "w")  # noqa: SIM115
        self.procs["agent"] = subprocess.Popen(
            agent_command(["--target", self.target, "--source", self.publish, "--home", str(self.agent_home),
                           "--public-key", str(self.home / "deploy_signing_key.pub"), "--interval", "0.5"]),
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def agent_version(self) -> str | None:
        path = self.agent_home / "active.json"
        return json.loads(path.read_text())["version"] if path.exists() else None

    def stop_all(self) -> None:
        for name in list(self.procs):
            stop_process(self.procs.pop(name))
        self.stop_controller()


@pytest.fixture(scope="module")
def loop(seaweedfs: Any, mlflow_server_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    server = mlflow_server_module(s3=seaweedfs)
    home = tmp_path_factory.mktemp("deploy-home")
    name = f"loop{os.getpid()}"
    publish = f"s3://edgeqat-artifacts/deployments/{name}/"
    target_file = home / f"{name}.yaml"
    target_file.write_text(
        "follows: {alias: production, stage: Production}\n"
        f"publish: {publish}\n"
        "gate: {accuracy_floor: 0.5, max_drop: 0.3, p95_latency_ms: 200.0, size_mb: 20.0, latency_iters: 20}\n")
    env = {**os.environ, **seaweedfs.env(), **server.env(), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    secret = load_webhook_secret(home / "secrets")
    register_deploy_webhook(server.url, f"http://127.0.0.1:{port}/webhook", secret)
    setup = Loop(server.url, env, home, target_file, name, publish, home / "agent", port, secret)
    try:
        yield setup
    finally:
        setup.stop_all()
