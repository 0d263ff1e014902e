"""CheckpointArtifacts: the best checkpoint as a run artifact, with what it is."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from edgeqat.tracking import RunRecorder


class CheckpointArtifacts(L.Callback):
    """At the end of a fit, uploads ``ModelCheckpoint``'s best file under ``checkpoints/<phase>/``
    with ``checkpoints/<phase>/metadata.json``: epoch, monitored metric and score, and the digest of
    the config it was trained with.
    """

    def __init__(self, recorder: RunRecorder, checkpoint: ModelCheckpoint, config_digest: str,
                 phase: str = "fp32") -> None:
        self.recorder, self.checkpoint = recorder, checkpoint
        self.config_digest, self.phase = config_digest, phase
        self._best_epoch: int | None = None
        self._best_score: float | None = None

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = self.checkpoint.best_model_score
        if score is not None and (self._best_score is None or float(score) != self._best_score):
            self._best_score, self._best_epoch = float(score), trainer.current_epoch

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ck = self.checkpoint
        if not ck.best_model_path or not Path(ck.best_model_path).exists():
            return
        artifact_dir = f"checkpoints/{self.phase}"
        # no staging copy: the fit is over, and no later phase writes into this phase's directory
        self.recorder.log_artifact(ck.best_model_path, artifact_dir, copy=False)
        score = ck.best_model_score
        self.recorder.log_dict({
            "phase": self.phase,
            "best_epoch": self._best_epoch,
            "epochs_trained": trainer.current_epoch,
            "global_step": trainer.global_step,
            "monitor": ck.monitor,
            "best_score": None if score is None else float(score),
            "files": [Path(ck.best_model_path).name],
            "config_digest": self.config_digest,
        }, f"{artifact_dir}/metadata.json")


def config_digest(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]
