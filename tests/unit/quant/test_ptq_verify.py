"""ORT PTQ baseline, evaluate_onnx / latency / file size helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeqat.quant import (
    QuantizationError,
    assert_integer_kernels,
    evaluate_onnx,
    file_size_mb,
    inspect_ort_graph,
    measure_latency_ms,
    ptq_onnx,
    run_onnx,
)
from edgeqat.quant.verify import output_step


def test_ptq_produces_working_qdq_model(artifacts, tmp_path: Path, monkeypatch) -> None:
    a = artifacts["test_resnet"]
    calibration = [a.images[i:i + 16] for i in range(0, 64, 16)]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = ptq_onnx(a.fp32_onnx, calibration, tmp_path / "ptq.onnx")
    assert list(cwd.iterdir()) == []  # ORT's helpers leave no temporary model in the working directory
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report = inspect_ort_graph(out)
    assert_integer_kernels(report)
    assert report.count("QLinearConv") > 0
    fp32_logits = run_onnx(a.fp32_onnx, a.images)
    result = evaluate_onnx(out, a.images, a.labels, reference_logits=fp32_logits)
    assert result.top1_agreement is not None and result.top1_agreement >= 0.95
    assert file_size_mb(out) < 0.5 * file_size_mb(a.fp32_onnx)


def test_ptq_without_calibration_is_refused(artifacts, tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="calibration"):
        ptq_onnx(artifacts["test_resnet"].fp32_onnx, [], tmp_path / "x.onnx")


def test_evaluate_onnx_metrics_match_a_manual_count(artifacts) -> None:
    a = artifacts["tiny_shuffle"]
    logits = run_onnx(a.int8_onnx, a.images)
    labels = a.labels.copy()
    labels[:20] = (logits[:20].argmax(1) + 1) % logits.shape[1]  # force 20 known mistakes
    result = evaluate_onnx(a.int8_onnx, a.images, labels, reference_logits=logits, batch_size=50)
    preds = logits.argmax(1)
    assert result.n == len(labels) and result.confusion.sum() == len(labels)
    assert result.accuracy == pytest.approx((preds == labels).mean())
    assert result.top1_agreement == 1.0
    for c, acc in enumerate(result.per_class_accuracy):
        mask = labels == c
        assert acc == pytest.approx((preds[mask] == c).mean()) if mask.any() else np.isnan(acc)
    assert np.array_equal(np.diag(result.confusion), [(preds[labels == c] == c).sum() for c in range(logits.shape[1])])
    assert result.to_dict()["n"] == len(labels)


def test_drift_counts_output_steps_and_the_images_within_one(artifacts) -> None:
    a = artifacts["tiny_shuffle"]
    logits = run_onnx(a.int8_onnx, a.images)
    step = output_step(a.int8_onnx)
    assert step is not None  # the logits come out of a DequantizeLinear
    reference = logits.copy()
    reference[:5, 0] += 3 * step  # 5 images 3 steps off, 5 exactly one step off: within
    reference[5:10, 1] -= step
    result = evaluate_onnx(a.int8_onnx, a.images, a.labels, reference_logits=reference)
    assert result.max_step_drift == pytest.approx(3, abs=1e-3)
    assert result.within_step_fraction == pytest.approx(1 - 5 / len(a.images))
    assert result.to_dict()["within_step_fraction"] == result.within_step_fraction


def test_evaluate_onnx_rejects_mismatched_inputs(artifacts) -> None:
    a = artifacts["tiny_shuffle"]
    with pytest.raises(ValueError, match="N = len"):
        evaluate_onnx(a.int8_onnx, a.images, a.labels[:-1])
    with pytest.raises(ValueError, match="reference_logits"):
        evaluate_onnx(a.int8_onnx, a.images, a.labels, reference_logits=np.zeros((3, 4)))


def test_latency_and_size(artifacts) -> None:
    a = artifacts["tiny_shuffle"]
    ms = measure_latency_ms(a.int8_onnx, (1, 3, 32, 32), threads=1, warmup=2, iters=5)
    assert 0 < ms < 1000
    assert file_size_mb(a.int8_onnx) == pytest.approx(a.int8_onnx.stat().st_size / 1e6)
