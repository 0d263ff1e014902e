"""ONNX post-export passes: int8 weights on disk, ops ORT quantizes, no exporter debug payload.

Each pass takes and edits a ``ModelProto`` in place and returns how many sites it changed; they
are a registry so a new rewrite is one decorated function. Applied by ``export_onnx`` in order:

* ``fold_constant_quantize``: ``QuantizeLinear(constant W)`` -> int8/uint8 initializer, so weights
  are stored as int8 (a float weight + QuantizeLinear would keep the FP32 file size);
* ``reduce_mean_to_global_avg_pool``: ``ReduceMean(axes=[2, 3], keepdims=1)`` on a 4-D tensor ->
  ``GlobalAveragePool`` (ORT has QLinearGlobalAveragePool, not an int8 ReduceMean);
* ``strip_debug_metadata``: the dynamo exporter stores stack traces and FX node text per node;
* ``prune_unused``: initializers and Constant nodes nothing reads any more.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["apply_onnx_passes", "list_onnx_passes", "register_onnx_pass"]

OnnxPass = Callable[[onnx.ModelProto], int]
_PASSES: dict[str, OnnxPass] = {}


def register_onnx_pass(name: str) -> Callable[[OnnxPass], OnnxPass]:
    """Add an ONNX pass; passes run in registration order."""

    def decorator(fn: OnnxPass) -> OnnxPass:
        if name in _PASSES:
            raise ValueError(f"ONNX pass {name!r} is already registered; pick another name.")
        _PASSES[name] = fn
        return fn

    return decorator


def list_onnx_passes() -> list[str]:
    """Names of the registered ONNX passes, in the order they run."""
    return list(_PASSES)


def apply_onnx_passes(model: onnx.ModelProto, names: list[str] | None = None) -> dict[str, int]:
    """Run the named passes (default: all) on ``model`` in place; returns changes per pass."""
    unknown = sorted(set(names or ()) - set(_PASSES))
    if unknown:
        raise ValueError(f"Unknown ONNX pass(es) {unknown}; valid: {list_onnx_passes()}")
    return {name: _PASSES[name](model) for name in (names if names is not None else list(_PASSES))}


class _Constants:
    """Initializers and Constant-node outputs of a graph, by name."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def get(self, name: str) -> np.ndarray | None:
        return self.values.get(name) if name else None

    def add(self, name: str, value: np.ndarray) -> None:
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.values[name] = value


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear semantics (round half to even, saturate) for per-tensor or per-axis."""
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zero_point.astype(np.int32)
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


@register_onnx_pass("fold_constant_quantize")
def _fold_constant_quantize(model: onnx.ModelProto) -> int:
    graph = model.graph
    consts = _Constants(graph)
    folded = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        x, scale = consts.get(node.input[0]), consts.get(node.input[1])
        zp = consts.get(node.input[2]) if len(node.input) > 2 else np.array(0, np.uint8)
        if x is None or scale is None or zp is None or not x.dtype == np.float32:
            continue
        consts.add(node.output[0], _quantize(x, scale, zp, int(_attr(node, "axis", 1))))
        graph.node.remove(node)
        folded += 1
    return folded


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


@register_onnx_pass("reduce_mean_to_global_avg_pool")
def _reduce_mean_to_global_avg_pool(model: onnx.ModelProto) -> int:
    graph = model.graph
    consts = _Constants(graph)
    changed = 0
    for i, node in enumerate(graph.node):
        if node.op_type != "ReduceMean" or _attr(node, "keepdims", 1) != 1:
            continue
        rank = _rank(model, node.input[0])
        axes = consts.get(node.input[1]) if len(node.input) > 1 else _attr(node, "axes")
        if rank != 4 or axes is None or sorted(int(a) % 4 for a in np.asarray(axes).ravel()) != [2, 3]:
            continue
        pool = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        graph.node.remove(node)
        graph.node.insert(i, pool)
        changed += 1
    return changed


@register_onnx_pass("strip_debug_metadata")
def _strip_debug_metadata(model: onnx.ModelProto) -> int:
    graph = model.graph
    stripped = 0
    for item in [*graph.node, *graph.value_info, *graph.input, *graph.output, *graph.initializer]:
        if len(item.metadata_props):
            stripped += 1
            del item.metadata_props[:]
        if item.doc_string:
            item.doc_string = ""
    return stripped


@register_onnx_pass("prune_unused")
def _prune_unused(model: onnx.ModelProto) -> int:
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    pruned = 0
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output[0] not in used:
            graph.node.remove(node)
            pruned += 1
    keep = [init for init in graph.initializer if init.name in used]
    pruned += len(graph.initializer) - len(keep)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    names = {n for node in graph.node for n in node.output} | used
    keep_vi = [vi for vi in graph.value_info if vi.name in names]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
    return pruned
