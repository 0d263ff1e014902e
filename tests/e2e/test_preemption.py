"""SIGTERM (preemption) mid-training: a KILLED run pointing at a checkpoint that resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e

JOB = ["data=digits", "data.image_size=16", "model=resnet18", "quant=fp32", "trainer.enable_progress_bar=false"]


def _train(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeqat", "train", *JOB, *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_leaves_killed_run_with_resumable_checkpoint(tracking_uri: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = _train(["trainer.max_epochs=40", "tracking.experiment_name=pre", f"output_dir={tmp_path}/out"],
                  env, tmp_path)
    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + 240
    run = None
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("pre")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "val/acc")) >= 2:
            run = runs[0]
            break
        time.sleep(0.5)
    assert run is not None, "training never logged two epochs"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err

    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["edgeqat.status"] == "KILLED"
    uri = run.data.tags["edgeqat.checkpoint_uri"]
    assert uri == f"runs:/{run.info.run_id}/checkpoints/preempted.ckpt"
    assert "preempted.ckpt" in {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    ckpt = Path(run.data.tags["edgeqat.checkpoint_local"])
    assert ckpt.exists()
    epochs_done = len(client.get_metric_history(run.info.run_id, "val/acc"))

    resumed = _train([f"ckpt_path={ckpt}", f"trainer.max_epochs={epochs_done + 2}", "tracking.experiment_name=resume",
                      f"output_dir={tmp_path}/out"], env, tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    exp = client.get_experiment_by_name("resume")
    (run2,) = client.search_runs([exp.experiment_id])
    assert run2.info.status == "FINISHED"
    history = client.get_metric_history(run2.info.run_id, "val/acc")
    assert 1 <= len(history) <= 3  # only the epochs left after the checkpoint, not a restart from 0
