"""The task function: compose -> build -> fit -> test -> (quantize/export) -> return the metrics.

Entry points: ``edgeqat train [OVERRIDES...]`` and ``mlflow run . -P overrides="..."``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from edgeqat.callbacks import CheckpointArtifacts, DatasetStats, PreemptionCheckpoint, TrainingStatus
from edgeqat.callbacks.checkpoint_artifacts import config_digest
from edgeqat.data import ClassificationDataModule
from edgeqat.lightning_modules import ClassifierModule
from edgeqat.tracking import MlflowRunLogger, RunContext, lightning_handles_sigterm, log_run_config, tracked_run
from edgeqat.tracking.system_metrics import system_metrics

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> tuple[ClassificationDataModule, ClassifierModule]:
    """Data first, so the backbone is built to the dataset's classes and channels; fails before any run."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: ClassificationDataModule = instantiate(cfg.data)
    datamodule.setup()
    backbone = instantiate(cfg.model)(num_classes=datamodule.num_classes, in_chans=datamodule.in_chans)
    module = ClassifierModule(
        backbone=backbone,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.scheduler else None,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
    )
    return datamodule, module


def make_trainer(cfg: DictConfig, run: RunContext, phase: str, max_epochs: int, epoch_offset: int = 0,
                 total_epochs: int | None = None) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Lightning trainer for one phase (fp32 / qat) writing into ``run``."""
    tc = cfg.tracking
    checkpoint = ModelCheckpoint(dirpath=run.output_dir / "checkpoints" / phase, monitor="val/acc", mode="max",
                                 filename="best", save_last=True)
    callbacks: list[L.Callback] = [
        checkpoint,
        PreemptionCheckpoint(run.recorder, run.output_dir / "checkpoints" / phase),
        TrainingStatus(run.recorder, phase, epoch_offset, total_epochs, tc.status_interval_s),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if phase == "fp32":
        callbacks.append(DatasetStats(run.recorder, tc.max_imbalance))
    if tc.log_checkpoints:
        digest = config_digest(OmegaConf.to_yaml(cfg, resolve=True))
        callbacks.append(CheckpointArtifacts(run.recorder, checkpoint, digest, phase))
    trainer = instantiate(cfg.trainer, max_epochs=max_epochs, default_root_dir=str(run.output_dir),
                          logger=MlflowRunLogger(run.recorder), callbacks=callbacks)
    return trainer, checkpoint


def fit_and_test(trainer: L.Trainer, checkpoint: ModelCheckpoint, module: L.LightningModule,
                 datamodule: L.LightningDataModule, ckpt_path: str | None = None) -> None:
    with lightning_handles_sigterm():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        trainer.test(module, datamodule=datamodule, ckpt_path="best" if checkpoint.best_model_path else None)


@dataclass(frozen=True)
class TrainResult:
    """What one job produced: its run, final metrics, and the spool if the server was away at the end."""

    run_id: str
    metrics: dict[str, float]
    spool_path: Path | None = None


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> TrainResult:
    """Run one job as one MLflow run."""
    datamodule, module = build(cfg)
    tc = cfg.tracking
    with tracked_run(tc.tracking_uri, tc.experiment_name, cfg.output_dir, tc.run_name, dict(tc.tags),
                     tc.close_timeout_s) as run, system_metrics(run, enabled=tc.system_metrics):
        log_run_config(run, OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_yaml(cfg, resolve=True),
                       overrides, dataset=datamodule.name)
        trainer, checkpoint = make_trainer(cfg, run, "fp32", cfg.trainer.max_epochs)
        fit_and_test(trainer, checkpoint, module, datamodule, cfg.ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    log.info("run %s finished: %s", run.run_id, {k: round(v, 4) for k, v in metrics.items() if "test/acc" in k})
    return TrainResult(run.run_id, metrics, run.spool_path)
