"""The run's description as one line a non-ML person reads at a glance.

MLflow shows ``mlflow.note.content`` at the top of a run's page (its "Description"). edgeqat keeps
it current: while training, the phase in words, the epoch, the progress and the time left with the
expected finish time; after training, what the job is doing; at the end the verdict with the
headline figures, or the failure in one sentence. The tags (``edgeqat.phase``, ``edgeqat.progress``,
``edgeqat.eta_s``) stay the machine-readable form of the same facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

__all__ = ["NOTE_TAG", "duration_in_words", "end_note", "phase_note", "phase_tags", "progress_note", "verdict_note"]

NOTE_TAG = "mlflow.note.content"

_PHASE_WORDS = {
    "fp32": "Training the FP32 model",
    "qat": "Quantization-aware training",
    "export": "Exporting the INT8 model",
    "sensitivity": "Measuring which layers INT8 hurts",
    "verify": "Verifying the INT8 model in ONNX Runtime",
}


def duration_in_words(seconds: float) -> str:
    """``"less than a minute"``, ``"about 7 minutes"``, ``"about 2 hours 5 minutes"``."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "less than a minute"
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} hour{'s' * (hours != 1)}"] if hours else []
    if minutes or not hours:
        parts.append(f"{minutes} minute{'s' * (minutes != 1)}")
    return "about " + " ".join(parts)


def progress_note(phase: str, epoch: int, total_epochs: int, progress_pct: float, eta_s: float | None,
                  now: datetime | None = None) -> str:
    """``"Quantization-aware training: epoch 5 of 8, 56 % done, about 4 minutes left (done around 14:32 UTC)."``

    ``epoch`` counts from 1 over the whole job (FP32 and QAT epochs together), like the progress.
    """
    words = _PHASE_WORDS.get(phase, phase)
    line = f"{words}: epoch {min(epoch, total_epochs)} of {total_epochs}, {progress_pct:.0f} % done"
    if eta_s is None:
        return line + ", estimating the time left."
    finish = (now or datetime.now(timezone.utc)) + timedelta(seconds=eta_s)
    return f"{line}, {duration_in_words(eta_s)} left (done around {finish:%H:%M} UTC)."


def phase_note(phase: str) -> str:
    """The phases after training, which report no epochs: ``"Exporting the INT8 model (training done)."``"""
    return f"{_PHASE_WORDS.get(phase, phase)} (training done)."


def phase_tags(phase: str) -> dict[str, str]:
    """``edgeqat.phase`` and the description, for a phase after training."""
    return {"edgeqat.phase": phase, NOTE_TAG: phase_note(phase)}


def verdict_note(metrics: Mapping[str, float]) -> str:
    """The finished run in one line: the INT8 accuracy against FP32, its speed-up and size, or FP32 only."""
    fp32 = metrics.get("test/acc_fp32")
    int8 = metrics.get("test/acc_int8")
    if int8 is None:
        return "Finished: FP32 model only" + (f", test accuracy {fp32:.3f}." if fp32 is not None else ".")
    parts = [f"Finished: INT8 test accuracy {int8:.3f}"]
    if fp32 is not None:
        change = (int8 - fp32) * 100
        parts[0] += f" (FP32 {fp32:.3f}, {'+' if change >= 0 else '-'}{abs(change):.1f} pt)"
    if "int8/speedup" in metrics:
        parts.append(f"{metrics['int8/speedup']:.1f}x the FP32 speed")
    if "int8/size_ratio" in metrics and metrics["int8/size_ratio"] > 0:
        parts.append(f"{1 / metrics['int8/size_ratio']:.1f}x smaller")
    if "test/acc_ptq" in metrics:
        parts.append(f"ORT's PTQ {metrics['test/acc_ptq']:.3f}")
    if "int8/top1_agreement" in metrics:
        parts.append(f"{metrics['int8/top1_agreement'] * 100:.1f} % agreement with the torch model")
    return ", ".join(parts) + "; verified in ONNX Runtime."


def end_note(status: str, failure: str | None) -> str | None:
    """The line for a run that did not finish (None for FINISHED: :func:`verdict_note` knows more)."""
    if status == "FAILED":
        return f"Failed: {failure or 'see failure/traceback.txt'}."
    if status == "KILLED":
        return ("Stopped before the end (SIGTERM or interrupted); a resumable checkpoint is named by the "
                "edgeqat.checkpoint_uri tag when one was saved.")
    return None
