"""Numerics: torch fake-quant (eval) vs converted torch vs ONNX Runtime INT8, and the artifact's form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgeqat.quant import (
    assert_integer_kernels,
    evaluate_onnx,
    file_size_mb,
    inspect_ort_graph,
    integer_reference_logits,
    run_onnx,
)
from tests.unit.quant.conftest import PARITY_MODELS

# Stated tolerance, in output quantization steps (range / 255): the converted torch graph and ORT's
# integer kernels compute what fake-quant computes (int32 bias rounding and hardsigmoid grid included),
# so only float summation order may flip a requantization: at most 1 step anywhere, on every CPU.
# On average: at most 0.005 step (five outputs in 1024 one step off), whatever the weight format, because
# the cause is float summation order, which every CPU has (its kernels pick the order), not the format:
# - int8, measured 0 of 1024 on all three models on Sapphire Rapids (AMX); 3 of 1024 for converted torch
#   on test_resnet on Zen 4 (AVX-512 VNNI, 2026-12-02), ORT 0. Before the bias / hardsigmoid fixes: 0.04
#   (test_resnet, bias), 0.006 (tiny_mobile, bias + the 6/255 hardsigmoid grid alone 0.002), 0.012.
# - int7 (AVX2 / AVX-512BW without VNNI, whose dense kernels saturate full-range weights): measured on
#   Zen 3 0-2 of 1024 outputs one step off for converted torch and 0-4 for ORT. Forced int8 there:
#   347-706 of 1024 off, by up to 28 steps (test_weight_format.py keeps that documented): the max
#   bound above, not this mean, is what catches a kernel that computes other integers.
MAX_STEPS = 1
MEAN_STEPS = 0.005
MIN_AGREEMENT = 0.99


def _logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_fake_quant_converted_and_ort_agree(artifacts, name: str) -> None:
    a = artifacts[name]
    a.prepared.eval()
    fake_quant = _logits(a.prepared, a.images)
    converted = _logits(a.converted, a.images)
    ort = run_onnx(a.int8_onnx, a.images)
    step = (fake_quant.max() - min(fake_quant.min(), 0.0)) / 255
    for other, label in ((converted, "converted"), (ort, "ORT INT8")):
        assert np.abs(fake_quant - other).max() <= MAX_STEPS * step * 1.001, f"{label} drifts from fake-quant"
        assert np.abs(fake_quant - other).mean() <= MEAN_STEPS * step, f"{label} drifts from fake-quant on average"
        assert (fake_quant.argmax(1) == other.argmax(1)).mean() >= MIN_AGREEMENT, label
    # The integer reference computes every conv/linear as ORT's kernels do (test_integer_reference.py);
    # only a tie in a float-defined op (add, mul, pooling) is left, one step at most.
    integer = integer_reference_logits(a.converted, a.images)
    assert np.abs(integer - ort).max() <= MAX_STEPS * step * 1.001 and np.abs(integer - ort).mean() <= MEAN_STEPS * step
    result = evaluate_onnx(a.int8_onnx, a.images, a.labels, reference_logits=integer, fake_quant_logits=fake_quant)
    assert result.top1_agreement is not None and result.top1_agreement >= MIN_AGREEMENT
    assert result.fake_quant is not None and result.fake_quant.top1_agreement >= MIN_AGREEMENT
    fp32_accuracy = (_logits(a.fp32, a.images).argmax(1) == a.labels).mean()
    assert result.accuracy >= fp32_accuracy - 0.05


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_int8_graph_is_qdq_with_int8_weights(artifacts, name: str) -> None:
    model = onnx.load(str(artifacts[name].int8_onnx))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    float_weights = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2}
    assert int8_weights, "conv/linear weights must be stored as int8 initializers"
    assert not float_weights, f"float weights left: {sorted(float_weights)[:3]}"
    assert not any(len(n.metadata_props) for n in model.graph.node), "exporter debug metadata not stripped"
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param, "batch axis should be dynamic"


def test_int8_file_markedly_smaller(artifacts) -> None:
    a = artifacts["test_resnet"]
    assert file_size_mb(a.int8_onnx) / file_size_mb(a.fp32_onnx) < 0.35


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_everything_runs_integer(artifacts, name: str) -> None:
    """conv->BN->ReLU(6) one unit, stem included; add/cat/pools/shuffle/SE/SiLU/hardswish integer."""
    report = inspect_ort_graph(artifacts[name].int8_onnx)
    assert_integer_kernels(report)
    assert report.count("QLinearConv") > 0 and report.count("Conv") + report.count("FusedConv") == 0
    for op in ("Relu", "Clip", "HardSwish", "HardSigmoid", "ReduceMean", "Sigmoid", "Mul", "Add"):
        assert report.count(op) == 0, (op, report.to_dict()["float_nodes"])
    assert not report.float_nodes, report.to_dict()["float_nodes"]


def test_mobile_blocks_map_to_integer_kernels(artifacts) -> None:
    report = inspect_ort_graph(artifacts["tiny_mobile"].int8_onnx)
    # depthwise conv+ReLU6, SE (mean->pool, hardsigmoid->QLinearAdd, sigmoid, mul), SiLU, residual
    for op in ("QLinearConv", "QLinearGlobalAveragePool", "QLinearMul", "QLinearSigmoid", "QLinearAdd", "QGemm"):
        assert report.count(op) > 0, op


def test_fp32_model_refused_as_int8(artifacts) -> None:
    from edgeqat.quant import QuantizationError

    with pytest.raises(QuantizationError, match="no integer kernel"):
        assert_integer_kernels(inspect_ort_graph(artifacts["test_resnet"].fp32_onnx))


def test_prepared_model_keeps_training_after_convert(artifacts) -> None:
    """convert works on a copy: the prepared model still trains and its graph is untouched."""
    a = artifacts["tiny_shuffle"]
    a.prepared.train()
    out = a.prepared(torch.from_numpy(a.images[:4]))
    out.sum().backward()
    a.prepared.eval()
    assert all(p.grad is not None for p in a.prepared.parameters() if p.requires_grad)
    a.prepared.zero_grad()


def test_float_stem_option_is_reported_with_its_reason(artifacts, tmp_path) -> None:
    """``float_stem=True`` (``quant.float_stem``): the RGB stem conv computes in float, on purpose,
    and the report names it and why; the rest stays integer and agrees with fake-quant."""
    from edgeqat.quant import convert, export_onnx, prepare_qat

    a = artifacts["tiny_mobile"]
    images = torch.from_numpy(a.images[:32])
    prepared = prepare_qat(a.fp32, images[:2], float_stem=True)
    prepared.train()
    with torch.no_grad():
        prepared(images)
    prepared.eval()
    path = export_onnx(convert(prepared), images[:1], tmp_path / "float_stem.onnx")
    report = inspect_ort_graph(path)
    assert_integer_kernels(report)
    stem = [n for n in report.float_nodes if n.op_type == "Conv"]
    assert len(stem) == 1 and "stem" in stem[0].reason
    assert all(n.reason.startswith(("RGB stem conv kept float", "layout conversion")) for n in report.float_nodes)
    as_dict = report.to_dict()
    assert as_dict["float_ops"]["Conv"] == 1 and {"name", "op_type", "reason"} <= set(as_dict["float_nodes"][0])
    assert (run_onnx(path, a.images).argmax(1) == _logits(prepared, a.images).argmax(1)).mean() >= MIN_AGREEMENT
