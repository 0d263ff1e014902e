"""What a person following a run sees: dataset statistics, status/progress tags, failures."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from edgeqat.callbacks.dataset_stats import class_distribution, imbalance_ratio
from edgeqat.tracking.summary import verdict_note
from edgeqat.train import train


def _run(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def test_distribution_and_ratio() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2])
    dist = class_distribution(labels, {"train": np.arange(6), "val": np.array([0, 1])}, num_classes=4)
    assert dist["train"].tolist() == [3, 1, 2, 0] and dist["val"].tolist() == [2, 0, 0, 0]
    assert imbalance_ratio(np.array([4, 2])) == 2.0
    assert imbalance_ratio(dist["train"]) == float("inf")


def test_run_carries_dataset_stats_status_and_lr(compose, tracking_uri: str) -> None:
    train(compose("tracking.experiment_name=obs", "trainer.limit_train_batches=3", "tracking.status_interval_s=0"))
    client, run = _run(tracking_uri, "obs")
    rid = run.info.run_id
    m = run.data.metrics
    assert (m["data/train/count"], m["data/val/count"], m["data/test/count"]) == (1257, 180, 360)
    assert 1.0 <= m["data/train/imbalance_ratio"] < 1.2
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{rid}/data/class_distribution.json"))
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["class"] for r in rows] == [str(i) for i in range(10)]
    assert sum(r["train"] + r["val"] + r["test"] for r in rows) == 1797
    png = Path(mlflow.artifacts.download_artifacts(f"runs:/{rid}/data/class_distribution.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "digits" and len(dataset_input.dataset.digest) == 16
    tags = run.data.tags
    # the last phase of a job is the verification of its exported model
    assert (tags["edgeqat.status"], tags["edgeqat.phase"], tags["edgeqat.progress"]) == ("FINISHED", "verify", "100")
    assert float(tags["edgeqat.eta_s"]) == 0
    # the description the UI shows on top of the run: the verdict and the headline figures, as logged
    assert tags["mlflow.note.content"] == verdict_note(m) == f"Finished: FP32 model only, test accuracy " \
                                                             f"{m['test/acc_fp32']:.3f}."  # TINY is quant=fp32
    assert "edgeqat.data_warning" not in tags
    assert any(k.startswith("lr-") for k in m)  # learning rate per epoch


def test_imbalanced_folder_gets_a_warning_tag(compose, tracking_uri: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n in (("common", 40), ("rare", 8)):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "tree" / name / f"{i}.png")
    train(compose("data=imagefolder", f"data.root={tmp_path / 'tree'}", "data.image_size=16",
                  "tracking.experiment_name=imb", "trainer.limit_train_batches=1"))
    _, run = _run(tracking_uri, "imb")
    ratio = run.data.metrics["data/train/imbalance_ratio"]
    assert 4.5 < ratio < 6  # 40 vs 8 images, split by class
    assert f"train: imbalance {ratio:.1f} > 3.0" in run.data.tags["edgeqat.data_warning"]


def test_injected_failure_ends_failed_with_reason_and_traceback(compose, tracking_uri: str) -> None:
    with pytest.raises(ValueError, match="Invalid learning rate"):
        train(compose("optim.optimizer.lr=-1.0", "tracking.experiment_name=fail"))
    client, run = _run(tracking_uri, "fail")
    assert run.info.status == "FAILED" and run.data.tags["edgeqat.status"] == "FAILED"
    assert run.data.tags["edgeqat.failure"].startswith("ValueError: Invalid learning rate")
    assert run.data.tags["mlflow.note.content"] == f"Failed: {run.data.tags['edgeqat.failure']}."
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/failure/traceback.txt")
    assert "Traceback (most recent call last)" in text and "Invalid learning rate" in text


def test_system_metrics_switched_on_by_config(compose, tracking_uri: str) -> None:
    train(compose("tracking.experiment_name=sys", "tracking.system_metrics=true",
                  "tracking.system_metrics_interval_s=0.5", "trainer.max_epochs=2"))
    _, run = _run(tracking_uri, "sys")
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
