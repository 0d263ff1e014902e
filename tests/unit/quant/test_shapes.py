"""Dynamic batch and image size where torch can keep them, fixed image size where its solver gives up."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.export import Dim

from edgeqat.quant.shapes import capture_with_dynamic_shapes


class _Capture:
    """Stands in for torch.export: refuses symbolic spatial dims like DLA's shape arithmetic does."""

    def __init__(self, static_error: Exception | None = None) -> None:
        self.calls: list[dict] = []
        self.static_error = static_error

    def __call__(self, dims: dict) -> str:
        self.calls.append(dims)
        if 2 in dims:
            try:
                raise NotImplementedError("The inequality, Eq(-x/4 + (((x/2)//2)), 0), cannot be solved")
            except NotImplementedError as exc:  # wrapped as the ONNX exporter does
                raise RuntimeError("Failed to export the model with torch.export. This is step 1/3") from exc
        if self.static_error is not None:
            raise self.static_error
        return "program"


def test_spatial_dims_are_fixed_only_after_the_dynamic_capture_fails(caplog: pytest.LogCaptureFixture) -> None:
    capture, batch = _Capture(), Dim("batch")
    with caplog.at_level(logging.WARNING, logger="edgeqat.quant.shapes"):
        assert capture_with_dynamic_shapes(capture, torch.zeros(2, 3, 24, 20), "Dla", batch=batch) == "program"
    assert [sorted(d) for d in capture.calls] == [[0, 2, 3], [0]]
    assert capture.calls[1][0] is batch, "the batch stays dynamic in the retry"
    # the log names the model, the solver's own reason (not the exporter's banner) and the size kept
    assert "Dla" in caplog.text and "24x20 only" in caplog.text and "NotImplementedError: The inequality" in caplog.text


def test_a_model_that_captures_dynamically_is_not_retried() -> None:
    calls = []
    assert capture_with_dynamic_shapes(lambda dims: calls.append(dims) or "ok", torch.zeros(1, 3, 8, 8), "m") == "ok"
    assert len(calls) == 1 and set(calls[0]) == {0, 2, 3}


def test_the_fixed_size_error_is_the_one_reported() -> None:
    """A failure that fixed sizes do not cure has another cause: report that one."""
    capture = _Capture(static_error=ValueError("data-dependent branch"))
    with pytest.raises(ValueError, match="data-dependent branch"):
        capture_with_dynamic_shapes(capture, torch.zeros(2, 3, 8, 8), "m")
    assert len(capture.calls) == 2


def test_inputs_without_spatial_dims_are_not_retried() -> None:
    capture = _Capture(static_error=ValueError("no"))
    with pytest.raises(ValueError):
        capture_with_dynamic_shapes(capture, torch.zeros(2, 16), "mlp")
    assert len(capture.calls) == 1
