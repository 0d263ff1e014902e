"""The store goes away under a running device agent: it keeps serving v1, then picks up v2 once S3 is back.

The agent runs as on a device (no torch, MLflow or cryptography importable) against a SeaweedFS
this test owns, polling every 0.5 s. With S3 stopped for over 30 s the agent must stay alive, keep
``active.json`` on v1 and keep answering predictions; after the restart, a new signed release must
be active within 30 s (the backoff is capped at 4 s so that bound is about the agent, not luck).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import pytest

from edgeqat.agent.manifest import HEARTBEAT_PREFIX
from edgeqat.agent.store import S3Store, StoreError
from edgeqat.stack.seaweed import DEFAULT_BUCKETS
from tests.fixtures.servers import OwnSeaweed
from tests.unit.agent.helpers import CLASSES, Signer, agent_command, device_env, png_bytes, publish, run_agent, \
    tiny_classifier

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX = "deployments/outage/"
SOURCE = f"s3://{DEFAULT_BUCKETS[0]}/{PREFIX}"


def _wait(what: str, check: Callable[[], bool], timeout_s: float, proc: subprocess.Popen) -> float:
    """Seconds until ``check()`` holds; fails if the agent exits or ``timeout_s`` passes first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        assert proc.poll() is None, f"the agent exited ({proc.returncode}) while waiting for {what}"
        if check():
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def test_agent_keeps_serving_through_an_s3_outage_and_activates_after(own_s3: OwnSeaweed, tmp_path: Path) -> None:
    signer = Signer()
    key = signer.write_pem(tmp_path / "deploy.pub")
    home = tmp_path / "home"
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)))
    v1_model, v2_model = tiny_classifier(1), tiny_classifier(2)

    @contextmanager
    def store() -> Iterator[S3Store]:  # a client per use: an idle keep-alive connection would hold up SeaweedFS's stop
        with closing(own_s3.server.client()) as client:
            yield S3Store(DEFAULT_BUCKETS[0], PREFIX, client=client)

    def heartbeat() -> dict:
        try:
            with store() as s:
                return json.loads(s.get(f"{HEARTBEAT_PREFIX}edge-1.json"))
        except StoreError:
            return {}

    def active_version() -> str | None:
        path = home / "active.json"
        return json.loads(path.read_text())["version"] if path.exists() else None

    with store() as s:
        publish(s, signer, v1_model, "1", target="outage")
    env = own_s3.server.env()
    log = (tmp_path / "agent.log").open("w")
    proc = subprocess.Popen(agent_command(["--target", "outage", "--source", SOURCE, "--home", str(home),
                                           "--public-key", str(key), "--interval", "0.5", "--max-backoff", "4",
                                           "--agent-id", "edge-1"]),
                            cwd=tmp_path, env=device_env(env), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait("heartbeat v1", lambda: active_version() == "1" and heartbeat().get("active_version") == "1", 60, proc)

        own_s3.stop()
        down_since = time.monotonic()
        while time.monotonic() - down_since < 32:
            assert proc.poll() is None, "the agent died during the outage"
            assert active_version() == "1"
            time.sleep(1.0)
        served = run_agent(["predict", str(image), "--home", str(home)], cwd=tmp_path)
        assert served.returncode == 0 and served.stdout.split("\t")[1] in CLASSES, served.stderr

        own_s3.start()
        back = time.monotonic()
        with store() as s:
            publish(s, signer, v2_model, "2", target="outage")
        _wait("v2 activated", lambda: active_version() == "2", 30 - (time.monotonic() - back), proc)
        _wait("heartbeat v2", lambda: heartbeat().get("active_version") == "2", 10, proc)
        beat = heartbeat()
        assert beat.get("state") in ("activated", "unchanged") and beat.get("target") == "outage"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    output = (tmp_path / "agent.log").read_text()
    assert proc.returncode == 0, output[-3000:]  # SIGTERM ends the loop cleanly
    unreachable = [line for line in output.splitlines() if " unreachable" in line]
    assert 1 <= len(unreachable) <= 2, f"one log line per state change, not per poll:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert len(os.listdir(home / "releases")) == 2, "v1 stays on the device beside v2 for a rollback"
