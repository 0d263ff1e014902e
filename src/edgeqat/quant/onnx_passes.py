"""ONNX post-export passes: int8 weights on disk, ops ORT quantizes, no exporter debug payload.

Each pass takes and edits a ``ModelProto`` in place and returns how many sites it changed; they
are a registry so a new rewrite is one decorated function. Applied by ``export_onnx`` in order:

* ``fold_constants``: elementwise/reshape nodes whose inputs are all constant become initializers
  (the exporter leaves big ones, e.g. the simulated BN fold ``W * gamma / std`` of a float conv);
* ``fold_constant_quantize``: ``QuantizeLinear(constant W)`` -> int8/uint8 initializer, so weights
  are stored as int8 (a float weight + QuantizeLinear would keep the FP32 file size);
* ``fold_scalar_mul_into_dequantize``: ``DequantizeLinear(q, s) * c`` -> ``DequantizeLinear(q, s*c)``
  (exact; the ``* 1/6`` of the decomposed hardsigmoid);
* ``remove_identity_requantize``: ``QuantizeLinear(DequantizeLinear(q, s, z), s, z)`` -> ``q``;
* ``fold_affine_into_float_conv``: a float Conv with constant weights followed by per-channel
  Mul/Div/Add/Sub by constants or an inference BatchNormalization -> one Conv (the float RGB stem
  keeps QAT's simulated BN fold ``conv(x, W*f) / f -> BN``; ORT fuses Conv+BN but not the Div);
* ``keep_float_convs_float``: a Conv/Gemm with float weights (a module left float) reading a per-tensor
  DequantizeLinear gets its own per-channel copy of that DequantizeLinear, same values (one reading
  a single channel, a grey-image stem, reads ``[x, 0 * x]`` instead: one channel is per-tensor to
  ORT). Otherwise ORT's ``WeightBiasQuantization`` quantizes its weights to per-tensor int8 when a
  QuantizeLinear follows, and the artifact no longer computes what the torch model does;
* ``reduce_mean_to_global_avg_pool``: ``ReduceMean(axes=[2, 3], keepdims=1)`` on a 4-D tensor ->
  ``GlobalAveragePool`` (ORT has QLinearGlobalAveragePool, not an int8 ReduceMean);
* ``strip_debug_metadata``: the dynamo exporter stores stack traces and FX node text per node;
* ``prune_unused``: nodes, initializers and value infos nothing reads any more.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["apply_onnx_passes", "list_onnx_passes", "quantized_weights_in_float", "register_onnx_pass"]

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


_FOLDABLE = frozenset({"Mul", "Div", "Add", "Sub", "Sqrt", "Reciprocal", "Neg", "Reshape", "Unsqueeze", "Squeeze",
                       "Cast", "Identity", "Transpose"})


@register_onnx_pass("fold_constants")
def _fold_constants(model: onnx.ModelProto) -> int:
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts = _Constants(graph)
    opsets = list(model.opset_import)
    folded = 0
    for node in list(graph.node):
        if node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        inputs = [consts.get(i) for i in node.input if i]
        if not inputs or any(v is None for v in inputs):
            continue
        names = [i for i in node.input if i]
        sub = helper.make_graph(
            [node], "fold",
            [
                helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                for n, v in zip(names, inputs)
            ],
            [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)],
        )
        try:
            evaluator = ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets))
            (value,) = evaluator.run(None, dict(zip(names, inputs)))
        except Exception:  # noqa: BLE001 - anything the reference runtime cannot do stays as it is
            continue
        consts.add(node.output[0], np.asarray(value))
        graph.node.remove(node)
        folded += 1
    return folded


def quantized_weights_in_float(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Conv/Gemm node name -> the float weight its ``QuantizeLinear -> DequantizeLinear`` rounds.

    Read before ``fold_constant_quantize`` stores the rounded ints: the only moment a QAT export
    still holds the weights it was trained with (BN folded, not yet on the int8 grid). Keyed by
    the consuming node, whose name later passes keep (they rename the initializers).
    """
    consts = _Constants(model.graph)
    consumers = _consumers(model.graph)
    found: dict[str, np.ndarray] = {}
    for q in model.graph.node:
        weight = consts.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if weight is None or weight.dtype != np.float32:
            continue
        after = consumers.get(q.output[0], [])
        # the exporter clamps a narrow grid (int7, [-127, 127]) with a Clip between the two
        after = [n for a in after for n in (consumers.get(a.output[0], []) if a.op_type == "Clip" else [a])]
        for dq in after:
            for node in consumers.get(dq.output[0], []) if dq.op_type == "DequantizeLinear" else []:
                if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and list(node.input[1:2]) == [dq.output[0]]:
                    found[node.name] = weight.copy()
    return found


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


def _scalar(value: np.ndarray | None) -> float | None:
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


@register_onnx_pass("fold_scalar_mul_into_dequantize")
def _fold_scalar_mul_into_dequantize(model: onnx.ModelProto) -> int:
    graph = model.graph
    consts = _Constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    folded = 0
    for mul in list(graph.node):
        if mul.op_type not in ("Mul", "Div") or len(mul.input) != 2:
            continue
        for data, other in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            if mul.op_type == "Div" and data != mul.input[0]:
                continue
            dq = producers.get(data)
            c = _scalar(consts.get(other))
            if dq is None or dq.op_type != "DequantizeLinear" or c is None or c <= 0 or data in outputs:
                continue
            scale = consts.get(dq.input[1])
            if scale is None or scale.size != 1 or len(users.get(data, [])) != 1:
                continue
            factor = c if mul.op_type == "Mul" else 1.0 / c
            name = f"{dq.input[1]}_x{folded}_{mul.name or 'mul'}"
            consts.add(name, (scale.astype(np.float32) * np.float32(factor)).astype(np.float32))
            dq.input[1] = name
            dq.output[0] = mul.output[0]
            graph.node.remove(mul)
            folded += 1
            break
    return folded


@register_onnx_pass("remove_identity_requantize")
def _remove_identity_requantize(model: onnx.ModelProto) -> int:
    graph = model.graph
    consts = _Constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    removed = 0
    for q in list(graph.node):
        if q.op_type != "QuantizeLinear" or q.output[0] in outputs:
            continue
        dq = producers.get(q.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        s_in, s_out = consts.get(dq.input[1]), consts.get(q.input[1])
        z_in = consts.get(dq.input[2]) if len(dq.input) > 2 else None
        z_out = consts.get(q.input[2]) if len(q.input) > 2 else None
        if s_in is None or s_out is None or s_in.size != 1 or s_out.size != 1 or z_in is None or z_out is None:
            continue
        same_zero = z_in.dtype == z_out.dtype and np.array_equal(z_in, z_out)
        if not same_zero or not np.isclose(s_in, s_out, rtol=1e-5, atol=0):
            continue
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == q.output[0]:
                    node.input[i] = dq.input[0]
        graph.node.remove(q)
        removed += 1
    return removed


def _per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """A constant broadcasting over (N, C, H, W) as one value per channel, as a (C,) vector."""
    if value is None:
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float64)
    squeezed = value.reshape(-1) if value.size == channels else None
    if squeezed is None or value.ndim > 4 or (value.ndim >= 3 and value.shape[-1] * value.shape[-2] != 1):
        return None
    if value.ndim == 4 and value.shape[1] != channels:
        return None
    return squeezed.astype(np.float64)


@register_onnx_pass("fold_affine_into_float_conv")
def _fold_affine_into_float_conv(model: onnx.ModelProto) -> int:
    graph = model.graph
    folded = 0
    changed = True
    while changed:
        changed = False
        consts = _Constants(graph)
        users = _consumers(graph)
        outputs = {o.name for o in graph.output}
        for conv in graph.node:
            w = consts.get(conv.input[1]) if conv.op_type == "Conv" and len(conv.input) > 1 else None
            if w is None or w.dtype != np.float32 or conv.output[0] in outputs:
                continue
            nxt = users.get(conv.output[0], [])
            if len(nxt) != 1:
                continue
            node = nxt[0]
            channels = w.shape[0]
            has_bias = len(conv.input) > 2 and conv.input[2]
            bias = consts.get(conv.input[2]) if has_bias else np.zeros(channels, np.float32)
            if bias is None:
                continue
            w64, b64 = w.astype(np.float64), bias.astype(np.float64)
            other = [i for i in node.input if i != conv.output[0]]
            commutes = node.op_type in ("Mul", "Add") or node.input[0] == conv.output[0]
            if node.op_type in ("Mul", "Div", "Add", "Sub") and len(other) == 1 and commutes:
                c = _per_channel(consts.get(other[0]), channels)
                if c is None:
                    continue
                if node.op_type == "Mul":
                    w64, b64 = w64 * c[:, None, None, None], b64 * c
                elif node.op_type == "Div":
                    w64, b64 = w64 / c[:, None, None, None], b64 / c
                elif node.op_type == "Add":
                    b64 = b64 + c
                else:
                    b64 = b64 - c
            elif node.op_type == "BatchNormalization" and len(node.output) == 1:
                params = [consts.get(i) for i in node.input[1:5]]
                if any(p is None for p in params):
                    continue
                scale, shift, mean, var = (p.astype(np.float64) for p in params)
                a = scale / np.sqrt(var + float(_attr(node, "epsilon", 1e-5)))
                w64, b64 = w64 * a[:, None, None, None], (b64 - mean) * a + shift
            else:
                continue
            w_name, b_name = f"{conv.name or 'conv'}_folded_w{folded}", f"{conv.name or 'conv'}_folded_b{folded}"
            consts.add(w_name, w64.astype(np.float32))
            consts.add(b_name, b64.astype(np.float32))
            del conv.input[1:]
            conv.input.extend([w_name, b_name])
            conv.output[0] = node.output[0]
            graph.node.remove(node)
            folded += 1
            changed = True
            break
    return folded


def _input_channels(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    """Channels (axis 1) of the data input of a Conv/ConvTranspose/Gemm with constant ``weight``."""
    if node.op_type == "Conv":
        return weight.shape[1] * int(_attr(node, "group", 1))
    if node.op_type == "ConvTranspose":
        return weight.shape[0]
    if node.op_type == "Gemm" and weight.ndim == 2 and not _attr(node, "transA", 0):
        return weight.shape[1] if _attr(node, "transB", 0) else weight.shape[0]
    return None


@register_onnx_pass("keep_float_convs_float")
def _keep_float_convs_float(model: onnx.ModelProto) -> int:
    graph = model.graph
    consts = _Constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    changed = 0
    for node in list(graph.node):
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 2:
            continue
        weight, dq = consts.get(node.input[1]), producers.get(node.input[0])
        if weight is None or weight.dtype != np.float32 or dq is None or dq.op_type != "DequantizeLinear":
            continue
        scale = consts.get(dq.input[1])
        zero_point = consts.get(dq.input[2]) if len(dq.input) > 2 else None
        channels = _input_channels(node, weight)
        if scale is None or zero_point is None or scale.size != 1 or channels is None:
            continue
        prefix = f"{node.name or node.op_type}_float_input{changed}"
        if channels == 1 and node.op_type == "Conv" and _attr(node, "group", 1) == 1:
            _widen_single_channel_input(graph, consts, node, weight, prefix)
            changed += 1
            continue
        consts.add(f"{prefix}_scale", np.full(channels, scale.reshape(-1)[0], scale.dtype))
        consts.add(f"{prefix}_zero_point", np.full(channels, zero_point.reshape(-1)[0], zero_point.dtype))
        per_channel = helper.make_node("DequantizeLinear", [dq.input[0], f"{prefix}_scale", f"{prefix}_zero_point"],
                                       [f"{prefix}"], name=f"{prefix}_dequantize", axis=1)
        node.input[0] = per_channel.output[0]
        graph.node.insert(list(graph.node).index(node), per_channel)
        changed += 1
    return changed


def _widen_single_channel_input(graph: onnx.GraphProto, consts: _Constants, node: onnx.NodeProto,
                                weight: np.ndarray, prefix: str) -> None:
    """A float conv on one input channel (a grey-image stem) reads ``[x, 0 * x]`` with a zero weight slice.

    A per-channel DequantizeLinear of one channel is per-tensor to ORT, which would quantize the
    weights again; a Concat is no DequantizeLinear. Same outputs: the second channel is zero.
    """
    consts.add(f"{prefix}_zero", np.zeros((), np.float32))
    consts.add(f"{prefix}_weight", np.concatenate([weight, np.zeros_like(weight)], axis=1))
    zeros = helper.make_node("Mul", [node.input[0], f"{prefix}_zero"], [f"{prefix}_zeros"], name=f"{prefix}_zeros")
    widened = helper.make_node("Concat", [node.input[0], f"{prefix}_zeros"], [prefix], name=f"{prefix}_concat", axis=1)
    node.input[0], node.input[1] = prefix, f"{prefix}_weight"
    at = list(graph.node).index(node)
    graph.node.insert(at, widened)
    graph.node.insert(at, zeros)


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
    pruned = 0
    while True:  # drop nodes whose outputs nobody reads, until nothing changes
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.output and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        pruned += len(dead)
    keep = [init for init in graph.initializer if init.name in used]
    pruned += len(graph.initializer) - len(keep)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    names = {n for node in graph.node for n in node.output} | used
    keep_vi = [vi for vi in graph.value_info if vi.name in names]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
    return pruned
