"""The baseline QAT must beat: ONNX Runtime static post-training quantization of the FP32 export."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.weight_format import WeightFormat, WeightRange, finish_int8_weights

__all__ = ["ptq_onnx"]


def ptq_onnx(
    fp32_onnx: str | Path,
    calibration: Iterable[np.ndarray],
    out: str | Path,
    ort_gemm_convs: bool = False,
    weights: WeightFormat | None = None,
) -> Path:
    """QDQ, per-channel int8 weights, uint8 activations, MinMax calibration (ORT ``quantize_static``).

    Same number formats as the QAT artifact, so the two compare like for like.

    Args:
        fp32_onnx: the FP32 model from ``export_onnx``.
        calibration: batches (N, C, H, W) float32, normalized as in training.
        out: where to write the quantized model.
        ort_gemm_convs: send deep convs to ORT's AMX int8 GEMM, as ``export_onnx`` does (``gemm_routing``).
        weights: the target's weight format, as in ``export_onnx``. ``int7`` is ORT's own
            ``reduce_range``, which narrows *every* weight to 7 bits, depthwise convs included (ORT
            has no per-node setting); QAT narrows only the kernels that saturate.

    Raises:
        QuantizationError: no calibration batch, or ORT's quantizer failed.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    if not batches:
        raise QuantizationError("ptq_onnx needs at least one calibration batch; pass a few validation batches.")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre, quantized = Path(tmp) / "preprocessed.onnx", Path(tmp) / "quantized.onnx"
        try:
            # ONNX's own shape inference suffices for CNNs; ORT's symbolic one gives up on our dynamic H/W
            # graphs and then leaves sym_shape_infer_temp.onnx (+ a .data file) in the working directory.
            quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(quantized), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                reduce_range=weights is not None and weights.range is WeightRange.INT7,
            )
        except Exception as exc:
            raise QuantizationError(
                f"ORT static quantization of {fp32_onnx} failed: {type(exc).__name__}: {exc}"
            ) from exc
        model = onnx.load(str(quantized))
    finish_int8_weights(model, weights, ort_gemm_convs)
    onnx.save(model, str(out))
    return out
