"""A real ``mlflow server`` goes away mid-training: nothing lost, nothing twice, the run finishes.

"Twice" is counted on the wire (``CountingProxy`` between the job and the server): the SQL store
silently drops a resent point identical to one it has, so its history could not show a resend.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.fixtures.counting_proxy import CountingProxy

pytestmark = pytest.mark.integration

EPOCHS = 8  # ~3 s each on 2 cores: the 12 s outage falls inside training
STEPS_PER_EPOCH = math.ceil(int(1797 * 0.7) / 64)  # digits train split, batch 64
JOB = ["data=digits", "data.image_size=16", "model=resnet18", "quant=fp32", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "tracking.status_interval_s=1",
       "tracking.experiment_name=outage"]


def _start_job(server_url: str, tmp_path: Path, epochs: int, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = server_url
    return subprocess.Popen([sys.executable, "-m", "edgeqat", "train", *JOB, f"trainer.max_epochs={epochs}",
                             f"output_dir={tmp_path}/out", *extra],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_points(client: MlflowClient, proc: subprocess.Popen, n: int) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= n:
            return runs[0].info.run_id
        time.sleep(0.3)
    raise AssertionError(f"job logged fewer than {n} points: {proc.poll()}")


def _assert_complete(client: MlflowClient, run_id: str, epochs: int, proxy: CountingProxy) -> list:
    history = client.get_metric_history(run_id, "train/loss")
    every_step = list(range(epochs * STEPS_PER_EPOCH))
    assert sorted(m.step for m in history) == every_step  # every point the trainer produced is there ...
    assert proxy.points("train/loss") == every_step  # ... and was sent exactly once
    assert len(client.get_metric_history(run_id, "val/acc")) == len(proxy.points("val/acc")) == epochs
    return history


def test_server_down_for_12s_mid_training_loses_nothing(mlflow_server, tmp_path: Path) -> None:
    server = mlflow_server()
    client = MlflowClient(server.url)
    with CountingProxy(server.url) as proxy:
        proc = _start_job(proxy.url, tmp_path, EPOCHS)
        run_id = _wait_for_points(client, proc, STEPS_PER_EPOCH)
        server.stop()
        down_at = time.time()
        time.sleep(12)
        assert proc.poll() is None, "training should go on while the server is away"
        server.start()
        up_at = time.time()
        _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["edgeqat.status"] == "FINISHED"
    history = _assert_complete(client, run_id, EPOCHS, proxy)
    during = [m for m in history if down_at * 1000 < m.timestamp < up_at * 1000]
    assert during, "no point was produced while the server was down: the outage did not overlap training"


def test_server_never_back_spools_and_sync_uploads_later(mlflow_server, tmp_path: Path) -> None:
    server = mlflow_server()
    client = MlflowClient(server.url)
    with CountingProxy(server.url) as proxy:
        proc = _start_job(proxy.url, tmp_path, 3, "tracking.close_timeout_s=3")
        run_id = _wait_for_points(client, proc, 3)
        server.stop()
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 3, err[-3000:]
        spool = tmp_path / "out" / "spool" / run_id
        assert f"edgeqat sync {spool}" in err
        assert (spool / "ops.jsonl").exists()

        server.start()  # "later": same server and database, the run still RUNNING there
        assert client.get_run(run_id).info.status == "RUNNING"
        env = {**os.environ, "MLFLOW_TRACKING_URI": proxy.url}
        sync = subprocess.run([sys.executable, "-m", "edgeqat", "sync", str(spool)], capture_output=True, text=True,
                              env=env, timeout=300)
    assert sync.returncode == 0, sync.stderr[-2000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    _assert_complete(client, run_id, 3, proxy)  # what the job sent before the outage is not sent again
    checkpoints = {a.path for a in client.list_artifacts(run_id, "checkpoints/fp32")}
    assert "checkpoints/fp32/best.ckpt" in checkpoints
