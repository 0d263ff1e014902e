"""Two-process DDP on CPU (gloo), QAT included: exactly one run, every point logged once, one INT8 model."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def test_ddp_qat_makes_one_run_and_one_verified_int8_model(tracking_uri: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    args = ["data=digits", "data.image_size=16", "model=resnet18", "model.name=test_resnet", "quant=qat_int8",
            "trainer.max_epochs=1", "quant.qat_epochs=2", "quant.freeze_observer_epoch=1", "quant.freeze_bn_epoch=1",
            "trainer.strategy=ddp", "trainer.devices=2", "trainer.log_every_n_steps=1",
            "quant.benchmark_resolutions=[]", "quant.latency_iters=5", "trainer.enable_progress_bar=false",
            "tracking.experiment_name=ddp", f"output_dir={tmp_path}/out"]
    proc = subprocess.run([sys.executable, "-m", "edgeqat", "train", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # Lightning started the second process
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    # one step axis over the FP32 epoch and the two QAT epochs, each step once (rank zero logs)
    steps_per_epoch = math.ceil(math.ceil(int(1797 * 0.7) / 2) / 64)  # each rank sees half of the split
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(3 * steps_per_epoch))
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 3
    # one INT8 file, exported by rank zero from the model both ranks trained, verified in ONNX Runtime
    m = run.data.metrics
    assert {"test/acc_fp32", "test/acc_qat", "test/acc_int8"} <= set(m)
    assert m["int8/top1_agreement"] >= 0.99 and m["int8/fake_quant_agreement"] >= 0.95
    assert "int8/model.onnx" in {a.path for a in client.list_artifacts(run.info.run_id, "int8")}
    assert run.data.tags["mlflow.note.content"].startswith("Finished: INT8 test accuracy")
    # every rank ends QAT with rank zero's quantization state (DDP broadcasts the buffers)
    assert run.data.tags["edgeqat.ddp_quant_state"] == "in step on 2 ranks"
    assert len(client.search_model_versions(f"run_id = '{run.info.run_id}'")) == 1
