"""A Lightning trainer per phase, wired to the run: logger, checkpoints, status, dataset stats."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from edgeqat.callbacks import CheckpointArtifacts, DatasetStats, PreemptionCheckpoint, ResumeCheckpoint, TrainingStatus
from edgeqat.callbacks.checkpoint_artifacts import config_digest
from edgeqat.tracking import MlflowRunLogger, RunContext, lightning_handles_sigterm


def make_trainer(cfg: DictConfig, run: RunContext, phase: str, max_epochs: int, epoch_offset: int = 0,
                 total_epochs: int | None = None, extra_callbacks: list[L.Callback] | None = None,
                 step_offset: int = 0) -> tuple[L.Trainer, ModelCheckpoint]:
    """A trainer for one phase (``fp32`` / ``qat``) writing into ``run``.

    ``epoch_offset``/``step_offset``: what earlier phases of the job trained, so that the phases
    share one epoch count (status, ETA) and one step axis (each ``train/loss`` step logged once).
    """
    tc = cfg.tracking
    ckpt_dir = run.output_dir / "checkpoints" / phase
    checkpoint = make_checkpoint(ckpt_dir)
    callbacks: list[L.Callback] = [
        checkpoint,
        PreemptionCheckpoint(run.recorder, ckpt_dir),
        ResumeCheckpoint(run.recorder, ckpt_dir, phase, tc.checkpoint_interval_s),
        TrainingStatus(run.recorder, phase, epoch_offset, total_epochs, tc.status_interval_s),
        LearningRateMonitor(logging_interval="epoch"),
        *(extra_callbacks or []),
    ]
    if phase == "fp32":
        callbacks.append(DatasetStats(run.recorder, tc.max_imbalance))
    if tc.log_checkpoints:
        digest = config_digest(OmegaConf.to_yaml(cfg, resolve=True))
        callbacks.append(CheckpointArtifacts(run.recorder, checkpoint, digest, phase))
    trainer = instantiate(cfg.trainer, max_epochs=max_epochs, default_root_dir=str(run.output_dir),
                          logger=MlflowRunLogger(run.recorder, step_offset), callbacks=callbacks)
    return trainer, checkpoint


def make_checkpoint(ckpt_dir: Path) -> ModelCheckpoint:
    """``best.ckpt``: weights only (what test, export and ``quant.init_checkpoint`` load, and what the
    run uploads: a third of the full state with AdamW's moments). The full state every epoch,
    ``last.ckpt``, is :class:`ResumeCheckpoint`'s.
    """
    return ModelCheckpoint(dirpath=ckpt_dir, monitor="val/acc", mode="max", filename="best", save_weights_only=True)


def fit_and_test(trainer: L.Trainer, checkpoint: ModelCheckpoint, module: L.LightningModule,
                 datamodule: L.LightningDataModule, ckpt_path: str | None = None) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the trainer's final scalar metrics."""
    with lightning_handles_sigterm():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        best = checkpoint.best_model_path
        # a resume on another machine restores ModelCheckpoint's memory of a best file it does not have
        trainer.test(module, datamodule=datamodule, ckpt_path=best if best and Path(best).exists() else None)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
