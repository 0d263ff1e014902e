"""The run's description in words: progress with the time left and the finish time, the verdict, the failure."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from edgeqat.callbacks.training_status import TrainingStatus
from edgeqat.tracking.summary import NOTE_TAG, duration_in_words, end_note, phase_tags, progress_note, verdict_note


@pytest.mark.parametrize(("seconds", "words"), [
    (12, "less than a minute"), (61, "about 1 minute"), (7 * 60 + 10, "about 7 minutes"),
    (3600, "about 1 hour"), (2 * 3600 + 5 * 60, "about 2 hours 5 minutes"), (3600 + 60, "about 1 hour 1 minute"),
])
def test_durations_read_like_a_person_says_them(seconds: float, words: str) -> None:
    assert duration_in_words(seconds) == words


def test_progress_says_phase_epoch_time_left_and_when_it_ends() -> None:
    now = datetime(2026, 12, 6, 14, 20, tzinfo=timezone.utc)
    assert progress_note("qat", 5, 8, 56.2, 12 * 60, now) == (
        "Quantization-aware training: epoch 5 of 8, 56 % done, about 12 minutes left (done around 14:32 UTC).")
    assert progress_note("fp32", 1, 8, 0, None, now) == (
        "Training the FP32 model: epoch 1 of 8, 0 % done, estimating the time left.")
    assert phase_tags("verify") == {"edgeqat.phase": "verify",
                                    NOTE_TAG: "Verifying the INT8 model in ONNX Runtime (training done)."}


def test_the_verdict_names_the_headline_figures() -> None:
    m = {"test/acc_fp32": 0.8516, "test/acc_int8": 0.858, "int8/speedup": 2.04, "int8/size_ratio": 0.25,
         "test/acc_ptq": 0.8515, "int8/top1_agreement": 1.0}
    assert verdict_note(m) == ("Finished: INT8 test accuracy 0.858 (FP32 0.852, +0.6 pt), 2.0x the FP32 speed, "
                               "4.0x smaller, ORT's PTQ 0.852, 100.0 % agreement with the torch model; "
                               "verified in ONNX Runtime.")
    assert verdict_note({"test/acc_fp32": 0.9, "test/acc_int8": 0.88}).startswith(
        "Finished: INT8 test accuracy 0.880 (FP32 0.900, -2.0 pt)")
    assert verdict_note({"test/acc_fp32": 0.97}) == "Finished: FP32 model only, test accuracy 0.970."
    assert end_note("FAILED", "ValueError: bad lr") == "Failed: ValueError: bad lr."
    assert end_note("KILLED", None).startswith("Stopped before the end") and end_note("FINISHED", None) is None


class _Tags:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def set_tags(self, tags: dict) -> None:
        self.sent.append(dict(tags))


def test_training_status_keeps_the_description_current() -> None:
    """Epochs count over the whole job (a QAT fit after 6 FP32 epochs is at epoch 7 of 8), like the progress."""
    recorder = _Tags()
    status = TrainingStatus(recorder, phase="qat", epoch_offset=6, total_epochs=8, interval_s=0)
    trainer = SimpleNamespace(estimated_stepping_batches=20, global_step=0, max_epochs=2, current_epoch=0,
                              is_global_zero=True)
    status.on_train_start(trainer, None)
    assert recorder.sent[-1][NOTE_TAG] == "Quantization-aware training: epoch 7 of 8, 75 % done, estimating the time left."
    trainer.global_step, trainer.current_epoch = 10, 1
    status._publish(trainer, force=True)
    note = recorder.sent[-1][NOTE_TAG]
    assert note.startswith("Quantization-aware training: epoch 8 of 8, 88 % done, ") and "left (done around " in note
    assert recorder.sent[-1]["edgeqat.progress"] == "88"
