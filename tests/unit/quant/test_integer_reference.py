"""The integer reference: ORT's integer kernels reproduced bit for bit, where float fake-quant cannot be."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgeqat.quant import (
    IntegerReference,
    convert,
    export_onnx,
    integer_reference_logits,
    prepare_qat,
    resolve_weight_format,
    run_onnx,
)
from edgeqat.quant.verify import output_step


class _TwoConvs(nn.Module):
    """Deep enough (1,152 terms per output) that float32 sums land on either side of a tie now and then."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 128, 3, padding=1)
        self.b = nn.Conv2d(128, 128, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))).flatten(1)


def _steps(logits: np.ndarray, reference: np.ndarray, step: float) -> np.ndarray:
    return np.rint(np.abs(logits - reference) / step)


def test_conv_ties_round_as_the_integer_kernel_rounds(tmp_path) -> None:
    """1M conv outputs: the integer reference equals ORT everywhere; the float graph misses the ties.

    Measured on an AMD EPYC Zen 3 (AVX2, int7 weights): 0 of 1,048,576 outputs differ from ORT for
    the integer reference, 23 (one step each) for the converted graph computed in float32.
    """
    torch.manual_seed(0)
    weights = resolve_weight_format("auto")  # what this CPU's kernels compute exactly
    images = torch.randn(32, 3, 16, 16)
    prepared = prepare_qat(_TwoConvs().eval(), images[:4], dense_weight_qmax=weights.dense_qmax)
    prepared.train()
    with torch.no_grad():
        prepared(images)  # the observers see the data
    prepared.eval()
    converted = convert(prepared)
    path = export_onnx(converted, images[:2], tmp_path / "two_convs.onnx", weights=weights)
    ort = run_onnx(path, images.numpy())
    step = output_step(path)
    assert IntegerReference(converted).groups == 2
    assert _steps(ort, integer_reference_logits(converted, images.numpy()), step).max() == 0
    with torch.no_grad():
        float_graph = converted(images).numpy()
    float_steps = _steps(ort, float_graph, step)
    assert float_steps.max() == 1 and 0 < (float_steps > 0).sum() < 1e-3 * float_steps.size


def test_a_kernel_one_integer_off_is_seen(artifacts, tmp_path) -> None:
    """The first output channel of every conv moved by one integer in the file: the reference shows it."""
    a = artifacts["tiny_mobile"]
    reference = integer_reference_logits(a.converted, a.images)
    step = output_step(a.int8_onnx)
    before = _steps(run_onnx(a.int8_onnx, a.images), reference, step)
    model = onnx.load(str(a.int8_onnx))
    for weight in model.graph.initializer:
        if weight.data_type == onnx.TensorProto.INT8 and len(weight.dims) == 4:
            values = numpy_helper.to_array(weight).copy()
            values[0] = np.where(values[0] < 60, values[0] + 1, values[0] - 1)  # stays on every format's grid
            weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    edited = tmp_path / "one_off.onnx"
    onnx.save(model, str(edited))
    after = _steps(run_onnx(edited, a.images), reference, step)
    assert (after > 0).sum() > (before > 0).sum() + 10


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.conv(x)).flatten(1)


def test_a_converted_graph_with_every_conv_float_is_its_own_reference() -> None:
    """``float_modules`` covering every conv leaves only float-defined ops: nothing to recompute."""
    torch.manual_seed(0)
    images = torch.randn(8, 3, 8, 8)
    prepared = prepare_qat(_Residual().eval(), images[:2], float_modules=["conv"])
    with torch.no_grad():
        prepared.train()
        prepared(images)
        prepared.eval()
    converted = convert(prepared)
    assert IntegerReference(converted).groups == 0
    with torch.no_grad():
        expected = converted(images).numpy()
    np.testing.assert_array_equal(integer_reference_logits(converted, images.numpy()), expected)


def test_a_graph_that_is_not_converted_is_refused() -> None:
    graph = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match="quant.convert"):
        IntegerReference(graph)
