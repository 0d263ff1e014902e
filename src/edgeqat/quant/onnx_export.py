"""Step EXPORT: an nn.Module (converted INT8 or plain FP32) to one ONNX file ORT can run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeqat.quant.errors import QuantizationError, root_cause_line
from edgeqat.quant.onnx_passes import apply_onnx_passes, list_onnx_passes, quantized_weights_in_float
from edgeqat.quant.shapes import capture_with_dynamic_shapes
from edgeqat.quant.steps import QuantStep
from edgeqat.quant.weight_format import WeightFormat, finish_int8_weights

__all__ = ["export_onnx"]

log = logging.getLogger(__name__)

_PROTOBUF_LIMIT = 2_000_000_000  # bytes; bigger models need external data


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    ort_gemm_convs: bool = False,
    weights: WeightFormat | None = None,
    float_weights: dict[str, np.ndarray] | None = None,
) -> Path:
    """Export with the dynamo exporter, batch axis dynamic, then apply ``onnx_passes``.

    For a converted model the weights end up as int8 initializers feeding DequantizeLinear; the
    same call exports the FP32 sibling artifact from the float model. The file is self-contained
    unless it exceeds protobuf's 2 GB limit (then weights go to ``<name>.data`` beside it).
    ``ort_gemm_convs`` sends deep convs to ORT's AMX int8 GEMM, same outputs (``gemm_routing``);
    ``weights`` is the target's weight format: its grid is checked and, for ``u8``, dense weights
    are stored as uint8 (``weight_format.finish_int8_weights``). None: neither (FP32 exports).
    ``float_weights``, if given, is filled with each quantized conv's weight before rounding (by
    node name): what ``quant.sensitivity`` computes a layer with when it leaves it float.

    Raises:
        QuantizationError: the exporter failed (message names the op it could not translate), or
            the weights leave the grid of ``weights``.
    """
    import onnx
    from torch.export import Dim

    from edgeqat.quant.qat_model import QATModel

    if isinstance(model, QATModel):
        raise TypeError(
            "export_onnx got the fake-quant QATModel; export convert(prepared) for the INT8 artifact, "
            "or the original float model for FP32."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        program = capture_with_dynamic_shapes(
            lambda dims: torch.onnx.export(model, (example_input,), dynamo=True, dynamic_shapes=(dims,), verbose=False),
            example_input, type(model).__name__, batch=Dim("batch"),
        )
    except Exception as exc:
        raise QuantizationError(
            f"[{QuantStep.EXPORT.value}] ONNX export of {type(model).__name__} failed: {root_cause_line(exc)}. "
            "If it names an op, leave the module that uses it float "
            "(prepare_qat(..., float_modules=[...])) or keep the model FP32."
        ) from exc
    finally:
        model.train(was_training)
    proto = program.model_proto
    passes = list_onnx_passes()
    split = passes.index("fold_constant_quantize")
    counts = apply_onnx_passes(proto, passes[:split])
    if float_weights is not None:
        float_weights.update(quantized_weights_in_float(proto))
    counts.update(apply_onnx_passes(proto, passes[split:]))
    counts.update(finish_int8_weights(proto, weights, ort_gemm_convs))
    log.debug("ONNX passes on %s: %s", path.name, counts)
    external = proto.ByteSize() > _PROTOBUF_LIMIT
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    # Written beside, then renamed: a reader (another DDP rank verifying the same file) never sees half a file.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    onnx.save_model(proto, str(partial), save_as_external_data=external, location=data_path.name)
    os.replace(partial, path)
    return path
