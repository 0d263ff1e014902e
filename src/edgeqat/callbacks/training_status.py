"""TrainingStatus: phase, progress and ETA as run tags, for people who follow training from the UI."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from edgeqat.tracking import RunRecorder
from edgeqat.tracking.summary import NOTE_TAG, progress_note

PHASES = ("fp32", "qat", "export", "verify")


class TrainingStatus(L.Callback):
    """Sets ``edgeqat.phase``, ``edgeqat.progress`` (0-100), ``edgeqat.eta_s`` and the run's
    description (the same in words, ``tracking/summary.py``) at most every ``interval_s`` seconds.
    Progress spans the whole job's training budget: this fit covers epochs ``[epoch_offset,
    epoch_offset + max_epochs)`` of ``total_epochs``. ``edgeqat.status`` itself is owned by the
    run's lifecycle (``tracked_run``).
    """

    def __init__(self, recorder: RunRecorder, phase: str = "fp32", epoch_offset: int = 0,
                 total_epochs: int | None = None, interval_s: float = 5.0) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r}: choose one of {PHASES}")
        if interval_s < 0:
            raise ValueError(f"interval_s={interval_s} must be >= 0")
        self.recorder, self.phase, self.interval_s = recorder, phase, interval_s
        self.epoch_offset, self.total_epochs = epoch_offset, total_epochs
        self._start = 0.0
        self._last = float("-inf")
        self._steps = 1
        self.updates = 0

    def _fraction(self, trainer: L.Trainer) -> float:
        in_fit = min(1.0, trainer.global_step / self._steps)
        total = self.total_epochs or trainer.max_epochs or 1
        return min(1.0, (self.epoch_offset + in_fit * (trainer.max_epochs or 1)) / total)

    def _publish(self, trainer: L.Trainer, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        fraction = self._fraction(trainer)
        tags = {"edgeqat.phase": self.phase, "edgeqat.progress": f"{100 * fraction:.0f}"}
        done_in_fit = trainer.global_step / self._steps
        total = self.total_epochs or trainer.max_epochs or 1
        eta_s = None
        if done_in_fit > 0:
            elapsed = now - self._start
            remaining_epochs = total - self.epoch_offset - done_in_fit * (trainer.max_epochs or 1)
            per_epoch = elapsed / (done_in_fit * (trainer.max_epochs or 1))
            eta_s = max(0.0, remaining_epochs * per_epoch)
            tags["edgeqat.eta_s"] = f"{eta_s:.0f}"
        tags[NOTE_TAG] = progress_note(self.phase, self.epoch_offset + trainer.current_epoch + 1, total,
                                       100 * fraction, eta_s)
        self.recorder.set_tags(tags)
        self.updates += 1

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # estimated_stepping_batches is a collective under DDP: every rank computes it, rank zero writes
        self._steps = max(1, int(trainer.estimated_stepping_batches))
        self._start = time.monotonic()
        if trainer.is_global_zero:
            self._publish(trainer, force=True)

    @override
    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self._publish(trainer)

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._publish(trainer, force=True)
