"""Activations left unrounded in a QDQ file: each QuantizeLinear -> DequantizeLinear pair becomes a clamp.

Where ORT's post-training quantization loses accuracy in a depthwise network, no conv is to blame:
on MobileNetV3 and Fashion-MNIST (validation 6,000 images, FP32 0.8223, INT8 0.8032; measured once, by hand) every conv
left float with its input unrounded gives 0.8097, every activation unrounded 0.8198, and no single
activation more than +0.37 pt. The rounding of the hard-swish, squeeze-excite and pooling outputs
adds up. This module writes the files that measure it: an activation *tensor* left float.

The pair's clamp stays (``Clip`` to the range the pair could represent): ORT's quantizer folds a
ReLU into a conv's output QuantizeLinear, so dropping the pair outright would drop the ReLU too
(on that model: accuracy 0.10). Every reader of the tensor then computes from the float value: an
elementwise op runs in float, a conv that read it through the pair runs in float as well (int8
weights dequantized): that is what leaving the tensor float costs, and the latency timing sees it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from edgeqat.quant.errors import QuantizationError

__all__ = ["clamp_bounds", "clamp_node", "quantized_activations", "unround_activations"]


def quantized_activations(model: onnx.ModelProto) -> list[str]:
    """Tensors a QuantizeLinear rounds that are computed, not stored (weights are initializers), in graph
    order; only those whose rounded copy is read by DequantizeLinears alone (a QDQ pair, nothing integer)."""
    constants = {init.name for init in model.graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    seen: list[str] = []
    for node in model.graph.node:
        if (node.op_type == "QuantizeLinear" and node.input[0] not in constants and node.input[0] not in seen
                and readers.get(node.output[0], set()) == {"DequantizeLinear"}):
            seen.append(node.input[0])
    return seen


def clamp_bounds(graph: onnx.GraphProto, dq: onnx.NodeProto, what: str) -> tuple[float, float]:
    """The float range a per-tensor DequantizeLinear can output: ``(qmin - zp) * s, (qmax - zp) * s``.

    Raises:
        QuantizationError: the pair is per-channel (``what`` names the tensor in the message).
    """
    constants = {init.name: init for init in graph.initializer}
    scale = numpy_helper.to_array(constants[dq.input[1]]).astype(np.float64)
    zero_point = numpy_helper.to_array(constants[dq.input[2]]) if len(dq.input) > 2 else np.zeros((), np.uint8)
    if scale.size != 1:
        raise QuantizationError(f"{what} is a per-channel quantized activation; leave its reader float with "
                                "scope weights")
    info = np.iinfo(zero_point.dtype)
    zp, s = int(zero_point.ravel()[0]), float(scale.ravel()[0])
    return (info.min - zp) * s, (info.max - zp) * s


def clamp_node(graph: onnx.GraphProto, tensor: str, dq: onnx.NodeProto, output: str, name: str) -> onnx.NodeProto:
    """A ``Clip`` of ``tensor`` to ``dq``'s range writing ``output`` (its bounds added as initializers)."""
    low, high = clamp_bounds(graph, dq, repr(tensor))
    for end, value in (("min", low), ("max", high)):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), f"{name}_{end}"))
    return onnx.helper.make_node("Clip", [tensor, f"{name}_min", f"{name}_max"], [output], name=name)


def unround_activations(model: onnx.ModelProto, tensors: Iterable[str]) -> None:
    """In place: every DequantizeLinear of a QuantizeLinear of one of ``tensors`` becomes a clamp of the tensor.

    Raises:
        QuantizationError: a name is not a quantized activation of ``model``.
    """
    wanted = set(tensors)
    known = set(quantized_activations(model))
    if wanted - known:
        raise QuantizationError(f"{sorted(wanted - known)[0]!r} is not a quantized activation of this file; "
                                f"choose from {', '.join(sorted(known)) or 'none'}")
    graph = model.graph
    rounding = {node.output[0]: node for node in graph.node
                if node.op_type == "QuantizeLinear" and node.input[0] in wanted}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.output[0] in rounding:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in rounding:
            tensor = rounding[node.input[0]].input[0]
            node = clamp_node(graph, tensor, node, node.output[0], f"{node.name or node.output[0]}_unrounded")
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
