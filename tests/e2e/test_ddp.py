"""Two-process DDP on CPU (gloo): exactly one run, every point logged once, by rank zero."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def test_ddp_two_processes_make_one_run_without_duplicates(tracking_uri: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    args = ["data=digits", "data.image_size=16", "model=resnet18", "quant=fp32", "trainer.max_epochs=2",
            "trainer.strategy=ddp", "trainer.devices=2", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "tracking.experiment_name=ddp", f"output_dir={tmp_path}/out"]
    proc = subprocess.run([sys.executable, "-m", "edgeqat", "train", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    steps_per_epoch = math.ceil(math.ceil(int(1797 * 0.7) / 2) / 64)  # each rank sees half of the split
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(2 * steps_per_epoch))
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert "test/acc_fp32" in run.data.metrics
