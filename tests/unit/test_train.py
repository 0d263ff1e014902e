"""A real (tiny) training job logs into exactly one SQLite-backed MLflow run."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from edgeqat.train import train


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_fast_dev_run_logs_config_into_one_finished_run(compose, tracking_uri: str) -> None:
    cfg = compose("trainer.fast_dev_run=true", "tracking.experiment_name=unit")
    result = train(cfg, ["trainer.fast_dev_run=true"])
    assert "test/acc_fp32" in result.metrics and result.spool_path is None

    client = MlflowClient(tracking_uri)
    run = _only_run(client, "unit")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "mobilenetv3_small_100"
    assert run.data.params["data.source"] == "digits"
    assert run.data.params["overrides"] == "trainer.fast_dev_run=true"
    assert run.data.tags["edgeqat.dataset"] == "digits"
    # Lightning's fast_dev_run suppresses its loggers; the job's own records (data, export) still land.
    assert not any(k.startswith(("train/", "val/")) for k in run.data.metrics)
    assert "fp32/size_mb" in run.data.metrics
    assert run.data.metrics["data/train/count"] == 1257
    assert run.data.tags["edgeqat.status"] == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert artifacts == {"config/config.yaml"}
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config/config.yaml")
    assert "name: mobilenetv3_small_100" in text


def test_one_epoch_learns_and_keeps_every_step(compose, tracking_uri: str) -> None:
    cfg = compose("model=resnet18", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "tracking.experiment_name=unit")
    train(cfg)
    client = MlflowClient(tracking_uri)
    run = _only_run(client, "unit")
    history = client.get_metric_history(run.info.run_id, "train/loss")
    steps_per_epoch = -(-int(1797 * 0.7) // 64)  # train split of digits, batch 64
    assert len(history) == 2 * steps_per_epoch
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert run.data.metrics["test/acc_fp32"] > 0.6  # chance is 0.1; resnet18 reaches ~0.94
    ckpts = sorted(a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/fp32"))
    assert ckpts == ["checkpoints/fp32/best.ckpt", "checkpoints/fp32/metadata.json"]
    meta = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/checkpoints/fp32/metadata.json")
    assert meta["best_epoch"] in (0, 1) and meta["monitor"] == "val/acc"
    assert meta["best_score"] == pytest.approx(max(m.value for m in client.get_metric_history(run.info.run_id, "val/acc")))
    assert len(meta["config_digest"]) == 16


def test_attaches_to_existing_run(compose, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment("attached")
    pre = client.create_run(exp_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", pre.info.run_id)
    train(compose("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"))
    runs = client.search_runs([exp_id])
    assert [r.info.run_id for r in runs] == [pre.info.run_id]
    assert "test/acc_fp32" in runs[0].data.metrics
    assert runs[0].info.status == "FINISHED"
