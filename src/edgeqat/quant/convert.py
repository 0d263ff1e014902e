"""Step CONVERT: fold BN, quantize weights; the prepared model stays usable for more training."""

from __future__ import annotations

import copy

import torch
from torch.fx import GraphModule

from edgeqat.quant._conv_bn_patterns import only_present_conv_kinds
from edgeqat.quant.bias_rounding import remove_bias_rounding, round_converted_biases
from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.qat_model import QATModel, restore_train_eval_methods, set_graph_mode
from edgeqat.quant.steps import QuantStep

__all__ = ["convert"]

_QDQ_OPS = {"quantize_per_tensor", "quantize_per_channel", "dequantize_per_tensor", "dequantize_per_channel"}


def convert(prepared: QATModel, fold_weights: bool = True) -> GraphModule:
    """Eval mode + ``convert_pt2e`` on a deep copy of ``prepared``.

    Returns a graph with int8 weights (``dequantize`` of int8 constants), biases on ORT's int32 grid
    (``bias_rounding``) and Q/DQ around every quantized activation; it computes what the fake-quant
    graph computes in eval mode. ``fold_weights=False`` keeps each weight as the float constant
    (BN folded) that a ``quantize`` op rounds: same outputs, and the trained weights stay readable
    (``export_onnx(..., float_weights=...)``, for ``sensitivity``).

    Raises:
        QuantizationError: the result holds no quantize/dequantize op (nothing was quantized).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if not isinstance(prepared, QATModel):
        raise TypeError(f"convert expects the QATModel returned by prepare_qat, got {type(prepared).__name__}.")
    model = copy.deepcopy(prepared.graph_module)
    set_graph_mode(model, training=False)
    from torchao.quantization.pt2e import disable_observer

    model.apply(disable_observer)
    remove_bias_rounding(model)
    with torch.no_grad(), only_present_conv_kinds(model):
        converted = convert_pt2e(model, fold_quantize=fold_weights)
    round_converted_biases(converted)
    set_graph_mode(converted, training=False)
    restore_train_eval_methods(converted).eval()  # BN is folded; eval() only sets the flag
    if not _has_qdq(converted):
        raise QuantizationError(
            f"[{QuantStep.CONVERT.value}] the converted graph has no quantize/dequantize op; was the model "
            "prepared with edgeqat.quant.prepare_qat?"
        )
    return converted


def _has_qdq(gm: GraphModule) -> bool:
    """Any ``quantized_decomposed.(de)quantize_per_*`` call in the graph."""
    for node in gm.graph.nodes:
        parts = str(node.target).split(".")
        if node.op == "call_function" and len(parts) > 1 and parts[1] in _QDQ_OPS:
            return True
    return False
