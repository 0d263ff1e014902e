"""PreemptionCheckpoint: on SIGTERM, save a resumable checkpoint and point the run at it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from edgeqat.tracking import RunRecorder

CHECKPOINT_TAG = "edgeqat.checkpoint_uri"


class PreemptionCheckpoint(L.Callback):
    """Lightning turns SIGTERM into ``SIGTERMException`` at a step boundary; this saves the full
    trainer state there (``ckpt_path=<file>`` resumes it) and tags the run with its artifact URI.
    """

    def __init__(self, recorder: RunRecorder, dirpath: Path, filename: str = "preempted.ckpt") -> None:
        self.recorder, self.path = recorder, Path(dirpath) / filename

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        trainer.save_checkpoint(self.path)  # collective under DDP; every rank calls it
        self._publish()

    @rank_zero_only
    def _publish(self) -> None:
        self.recorder.log_artifact(self.path, "checkpoints", copy=False)
        self.recorder.set_tags({CHECKPOINT_TAG: f"runs:/{self.recorder.run_id}/checkpoints/{self.path.name}",
                                "edgeqat.checkpoint_local": str(self.path.resolve())})
