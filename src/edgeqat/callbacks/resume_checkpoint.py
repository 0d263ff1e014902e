"""ResumeCheckpoint: the full trainer state after every epoch, locally and in the run's artifacts.

A SIGKILL, an OOM kill or a lost machine runs no handler, so what a resume can use is what was
written before. After each epoch's validation this saves ``last.ckpt`` (weights, optimizer, loop
and callback state: ``ckpt_path=.../last.ckpt`` or ``resume=<run_id>`` continues from it) and, at
most every ``interval_s`` (the first one an interval into the fit), queues it on the run's
recorder as ``checkpoints/<phase>/last.ckpt``. The recorder sends in order, so when the server has the checkpoint it also has every metric logged
before it: a resume from it leaves no gap. (Lightning's ``ModelCheckpoint(save_last=True)`` writes
``last.ckpt`` only when it saved a top-k file in the same step, i.e. never with ``save_top_k=0``.)
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from edgeqat.tracking import RunRecorder

RESUME_TAG = "edgeqat.resume_checkpoint"  # "<phase>/<epochs done>": the newest full state uploaded


class ResumeCheckpoint(L.Callback):
    """Saves ``<dirpath>/last.ckpt`` each epoch; uploads it (``checkpoints/<phase>/``) every ``interval_s``."""

    def __init__(self, recorder: RunRecorder, dirpath: Path, phase: str, interval_s: float | None) -> None:
        self.recorder, self.path, self.phase, self.interval_s = recorder, Path(dirpath) / "last.ckpt", phase, interval_s
        self._last_upload = float("-inf")

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the first upload after one interval: a job shorter than that has little to lose, and the
        # full state (3x the weights with AdamW) is not worth sending for it
        self._last_upload = time.monotonic()

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        trainer.save_checkpoint(self.path)  # collective under DDP: every rank calls it, rank zero writes
        self._upload(trainer.current_epoch + 1)

    @rank_zero_only
    def _upload(self, epochs_done: int) -> None:
        if self.interval_s is None or time.monotonic() - self._last_upload < self.interval_s:
            return
        self._last_upload = time.monotonic()
        # copied when queued: the next epoch rewrites the file while the upload may still wait
        self.recorder.log_artifact(self.path, f"checkpoints/{self.phase}")
        self.recorder.set_tags({RESUME_TAG: f"{self.phase}/{epochs_done}"})
