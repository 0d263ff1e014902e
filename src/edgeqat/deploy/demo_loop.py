"""The second half of ``edgeqat demo``: the run's registered version to a model running on an agent.

promote to ``production`` -> the deploy controller (started beside the stack, kept running, stopped
by ``edgeqat stack down``) gets the webhook, gates and publishes -> a local agent (``edgeqat agent
--once``, the device code path) verifies and activates it -> ``edgeqat agent predict`` classifies a few
test images. Each step is the real command, as a user would type it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeqat.errors import EdgeqatError
from edgeqat.stack.webhook import DEFAULT_DEPLOY_PORT

Echo = Callable[[str], None]
TARGET = "local"


@dataclass(frozen=True)
class LoopResult:
    model_name: str
    version: str
    model_url: str
    verdict: str
    predictions: tuple[str, ...]
    seconds_to_agent: float


def ensure_controller(home: Path, env: Mapping[str, str], port: int = DEFAULT_DEPLOY_PORT, *,
                      poll_interval_s: float = 10.0, extra_args: tuple[str, ...] = ()) -> str:
    """``edgeqat deploy serve`` as a kept server (pid file ``<home>/run/deploy.json``); its URL.

    A running one is reused; ``stop_server(StackPaths.at(home).pid("deploy"))`` (or ``edgeqat stack
    down``) stops it.
    """
    from edgeqat.stack.processes import PidState, ServerSpec, read_pid_file, start_server
    from edgeqat.stack.s3 import with_local_s3_keys
    from edgeqat.stack.stack import StackPaths

    paths = StackPaths.at(home)
    state, record = read_pid_file(paths.pid("deploy"))
    if state is PidState.RUNNING and record is not None:
        return record.urls["controller"]
    url = f"http://127.0.0.1:{port}"
    command = (sys.executable, "-m", "edgeqat", "deploy", "serve", "--home", str(paths.home), "--port", str(port),
               "--poll-interval", str(poll_interval_s), *extra_args)
    spec = ServerSpec(name="deploy", command=command, env=with_local_s3_keys(env), log_path=paths.log("deploy"),
                      health_url=f"{url}/health", cwd=paths.home, urls={"controller": url})
    start_server(spec, paths.pid("deploy"), timeout_s=120)
    return url


def write_test_images(run_id: str, tracking_uri: str, dest: Path, count: int = 4) -> list[tuple[Path, str]]:
    """A few images of the run's test split, each of another class, as PNG files with their true class names."""
    import mlflow.artifacts
    import numpy as np
    from hydra.utils import instantiate
    from matplotlib import image as mpimg
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/config/config.yaml",
                                                              tracking_uri=tracking_uri))
    dm = instantiate(cfg.data)
    dm.setup()
    test, labels = dm.split_indices["test"], dm.image_set.labels
    firsts = {int(labels[i]): int(i) for i in reversed(test)}  # the first test image of each class
    idx = [firsts[c] for c in sorted(firsts)][:: max(1, len(firsts) // count)][:count]
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for n, i in enumerate(idx):
        img = np.asarray(dm.image_set.images[int(i)])
        label = dm.class_names[int(dm.image_set.labels[int(i)])]
        path = dest / f"test{n}_{label}.png"
        mpimg.imsave(path, img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        out.append((path, label))
    return out


def active_version(agent_home: Path) -> str | None:
    import json

    path = agent_home / "active.json"
    return json.loads(path.read_text()).get("version") if path.exists() else None


def resolve_deploy_port(home: Path, wanted: int | None) -> int:
    """The running controller's port, else ``wanted`` (0: a free one), else the default."""
    from edgeqat.stack.processes import PidState, free_port, read_pid_file
    from edgeqat.stack.stack import StackPaths

    state, record = read_pid_file(StackPaths.at(home).pid("deploy"))
    if state is PidState.RUNNING and record is not None:
        return int(record.urls["controller"].rsplit(":", 1)[1])
    if wanted == 0:
        return free_port()
    return wanted or DEFAULT_DEPLOY_PORT


def close_the_loop(home: Path, tracking_uri: str, run_id: str, env: Mapping[str, str], echo: Echo = print,
                   timeout_s: float = 180.0, port: int = DEFAULT_DEPLOY_PORT) -> LoopResult:
    """Promote the run's version, wait for the agent to run it, classify test images with it."""
    from mlflow.tracking import MlflowClient

    from edgeqat.registry import promote

    client = MlflowClient(tracking_uri)
    tagged = client.get_run(run_id).data.tags.get("edgeqat.model_version")
    if not tagged:
        raise EdgeqatError(f"Run {run_id} registered no INT8 model (quant=fp32 or registry.register=false): "
                           "the deploy half of the demo needs quant=qat_int8 or ptq_int8")
    name, version = tagged.rsplit("/", 1)
    from edgeqat.stack.s3 import with_local_s3_keys

    env = with_local_s3_keys({**env, "PYTHONUNBUFFERED": "1"})  # the agent reads the bucket with boto3
    controller = ensure_controller(home, env, port)
    echo(f"Deploy controller: {controller} (log {home / 'logs' / 'deploy.log'})")
    t0 = time.monotonic()
    promote(client, name, version, alias="production")
    echo(f"Promoted {name} v{version} to alias 'production': the registry webhook tells the controller")
    agent = [sys.executable, "-m", "edgeqat", "agent", "--target", TARGET, "--home", str(home / "agent" / TARGET),
             "--public-key", str(home / "deploy_signing_key.pub")]
    verdict = ""
    while time.monotonic() - t0 < timeout_s:
        verdict = client.get_model_version(name, version).tags.get(f"deploy.{TARGET}.status", "")
        if verdict == "rejected":
            break
        if verdict == "deployed":
            subprocess.run([*agent, "--once"], env=env, capture_output=True, text=True, timeout=120)
            if active_version(home / "agent" / TARGET) == version:
                break
        time.sleep(1.0)
    else:
        raise EdgeqatError(f"{name} v{version} did not reach the agent in {timeout_s:.0f} s (verdict: "
                           f"{verdict or 'none yet'}): see {home / 'logs' / 'deploy.log'}")
    seconds = time.monotonic() - t0
    model_url = f"{tracking_uri}/#/models/{name}/versions/{version}"
    if verdict == "rejected":
        reason = client.get_model_version(name, version).tags.get(f"deploy.{TARGET}.reason", "")
        echo(f"The gate rejected v{version}: {reason}")
        return LoopResult(name, version, model_url, verdict, (), seconds)
    echo(f"Agent runs {name} v{version} ({seconds:.1f} s after the promotion)")
    images = write_test_images(run_id, tracking_uri, home / "agent" / "demo-images")
    pred = subprocess.run([*agent[:4], "predict", *(str(p) for p, _ in images), "--home",
                           str(home / "agent" / TARGET)], env=env, capture_output=True, text=True, timeout=120)
    lines = tuple(line for line in pred.stdout.splitlines() if line.strip())
    for line, (_, truth) in zip(lines, images):
        echo(f"    {line}   (true: {truth})")
    if pred.returncode != 0:
        echo(f"agent predict failed: {pred.stderr.strip()}")
    return LoopResult(name, version, model_url, verdict, lines, seconds)

