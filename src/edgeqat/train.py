"""The task function: compose -> build -> fit -> test -> (quantize/export) -> return the metrics.

Entry points: ``edgeqat train [OVERRIDES...]`` and ``mlflow run . -P overrides="..."``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from edgeqat.data import ClassificationDataModule
from edgeqat.lightning_modules import ClassifierModule
from edgeqat.tracking import MlflowRunLogger, log_run_config, resolve_tracking_uri, tracked_run

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


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Run one job as one MLflow run; returns the final metrics."""
    datamodule, module = build(cfg)
    with tracked_run(cfg.tracking.tracking_uri, cfg.tracking.experiment_name, cfg.tracking.run_name,
                     tags=dict(cfg.tracking.tags)) as run:
        run_id = run.info.run_id
        log_run_config(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_yaml(cfg, resolve=True),
                       overrides, dataset=datamodule.name)
        out_dir = Path(cfg.output_dir) / run_id
        checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", monitor="val/acc", mode="max",
                                     filename="best", save_last=True)
        trainer: L.Trainer = instantiate(cfg.trainer, default_root_dir=str(out_dir),
                                         logger=MlflowRunLogger(run_id, resolve_tracking_uri(cfg.tracking.tracking_uri)),
                                         callbacks=[checkpoint])
        trainer.fit(module, datamodule=datamodule)
        trainer.test(module, datamodule=datamodule, ckpt_path="best" if checkpoint.best_model_path else None)
        if cfg.tracking.log_checkpoints and checkpoint.best_model_path:
            import mlflow

            mlflow.log_artifact(checkpoint.best_model_path, "checkpoints")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    log.info("run %s finished: %s", run_id, {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/acc")})
    return metrics
