"""Exact graph rewrites applied before annotation, so the exported ONNX uses ops ORT runs in int8.

Every pass keeps the math identical (same outputs in float); only the op spelling changes:

* ``drop_identity_arithmetic``: ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1`` with a Python number ->
  ``x``. MobileOne's train-time block starts its branch sum at ``0`` (``scale_out + identity_out``
  with no identity branch); annotated as an add, it re-quantizes a tensor with a second observer's
  near-identical scale, and ORT's optimizer merges that Q->DQ->Q->DQ pair into one with another
  range: ORT then runs another model than the file defines (mobileone_s0: up to 59 output steps).
* ``mean_to_global_avg_pool``: ``x.mean((2, 3), keepdim=True)`` (squeeze-excite) -> global average
  pool. ORT has QLinearGlobalAveragePool; a float ReduceMean in ORT's int8 NHWC layout costs ~6x.
* ``decompose_silu``: ``silu(x)`` -> ``x * sigmoid(x)``, i.e. QLinearSigmoid + QLinearMul instead of
  a float island (ORT has no int8 SiLU).
* ``channel_shuffle_to_index_select``: ShuffleNet's reshape-transpose-reshape -> one channel gather
  (ORT moves uint8 through Gather; the 5-D transposes cost more on the int8 path).
* ``decompose_hard_activations``: ``hardsigmoid(x)`` -> ``hardtanh(x + 3, 0, 6) * (1/6)`` and
  ``hardswish(x)`` -> ``x * hardsigmoid(x)``. ORT has no int8 HardSigmoid/HardSwish; this way the
  add+clip is one QLinearAdd, the ``* 1/6`` becomes a pure rescale of the dequantized output
  (folded away by ``onnx_passes``) and the product a QLinearMul: no float island left. The nodes
  are tagged (``HARD_SIGMOID_TAG``) so the quantizer gives them the exact fixed ranges.

Passes are a registry so a new rewrite is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.fx import GraphModule, Node

__all__ = ["apply_passes", "list_passes", "register_pass"]

aten = torch.ops.aten

HARD_SIGMOID_TAG = "edgeqat_hard_sigmoid"  # node.meta key: "add" | "clamp" | "scale"

FxPass = Callable[[GraphModule], int]  # returns how many sites it rewrote
_PASSES: dict[str, FxPass] = {}


def register_pass(name: str) -> Callable[[FxPass], FxPass]:
    """Add a rewrite; passes run in registration order."""

    def decorator(fn: FxPass) -> FxPass:
        if name in _PASSES:
            raise ValueError(f"FX pass {name!r} is already registered; pick another name.")
        _PASSES[name] = fn
        return fn

    return decorator


def list_passes() -> list[str]:
    """Names of the registered rewrites, in the order they run."""
    return list(_PASSES)


def apply_passes(gm: GraphModule, names: list[str] | None = None) -> dict[str, int]:
    """Run the named passes (default: all) on ``gm`` in place; returns rewrites per pass."""
    unknown = sorted(set(names or ()) - set(_PASSES))
    if unknown:
        raise ValueError(f"Unknown FX pass(es) {unknown}; valid: {list_passes()}")
    counts = {name: _PASSES[name](gm) for name in (names if names is not None else list(_PASSES))}
    if any(counts.values()):
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return counts


def _val(node: object) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val if isinstance(val, torch.Tensor) else None


_IDENTITY_OPERAND = {
    aten.add.Tensor: 0, aten.add_.Tensor: 0, aten.add.Scalar: 0, aten.add_.Scalar: 0,
    aten.sub.Tensor: 0, aten.sub_.Tensor: 0, aten.sub.Scalar: 0, aten.sub_.Scalar: 0,
    aten.mul.Tensor: 1, aten.mul_.Tensor: 1, aten.mul.Scalar: 1, aten.mul_.Scalar: 1,
    aten.div.Tensor: 1, aten.div_.Tensor: 1, aten.div.Scalar: 1, aten.div_.Scalar: 1,
}
_COMMUTATIVE = {aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor}


def _mutates(node: Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


@register_pass("drop_identity_arithmetic")
def _drop_identity_arithmetic(gm: GraphModule) -> int:
    count = 0
    for node in list(gm.graph.nodes):
        identity = _IDENTITY_OPERAND.get(node.target) if node.op == "call_function" else None
        if identity is None or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
            continue
        a, b = node.args
        if isinstance(b, Node) and node.target in _COMMUTATIVE:
            a, b = b, a
        if not isinstance(a, Node) or isinstance(b, (Node, bool)) or not isinstance(b, (int, float)) or b != identity:
            continue
        a_val, out_val = _val(a), _val(node)
        if a_val is None or out_val is None or a_val.dtype != out_val.dtype or a_val.shape != out_val.shape:
            continue  # x + 0 that promotes (int -> float) or broadcasts is not the identity
        if len(a.users) > 1 and any(_mutates(user) for user in node.users):
            continue  # `t = x + 0; t += y` must not become `x += y` while x has other readers
        node.replace_all_uses_with(a)
        gm.graph.erase_node(node)
        count += 1
    return count


@register_pass("mean_to_global_avg_pool")
def _mean_to_global_avg_pool(gm: GraphModule) -> int:
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.mean.dim:
            continue
        x = node.args[0]
        x_val = _val(x)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if x_val is None or x_val.dim() != 4 or node.kwargs.get("dtype") is not None or dims is None:
            continue
        if sorted(d % 4 for d in dims) != [2, 3]:
            continue
        with gm.graph.inserting_before(node):
            pool = gm.graph.call_function(aten.adaptive_avg_pool2d.default, (x, [1, 1]))
            pool.meta = dict(node.meta)
            if keepdim:
                out = pool
            else:
                pool.meta["val"] = _val(node).unsqueeze(-1).unsqueeze(-1)
                out = gm.graph.call_function(aten.flatten.using_ints, (pool, 1))
                out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        count += 1
    return count


@register_pass("decompose_silu")
def _decompose_silu(gm: GraphModule) -> int:
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.silu.default, aten.silu_.default):
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            gate = gm.graph.call_function(aten.sigmoid.default, (x,))
            gate.meta = dict(node.meta)
            out = gm.graph.call_function(aten.mul.Tensor, (x, gate))
            out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        count += 1
    return count


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


@register_pass("channel_shuffle_to_index_select")
def _channel_shuffle_to_index_select(gm: GraphModule) -> int:
    """view(N, g, C/g, H, W) -> transpose(1, 2) [-> contiguous/clone] -> view(N, C, H, W)."""
    count = 0
    views = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
    for first in list(gm.graph.nodes):
        if first.op != "call_function" or first.target not in views or len(first.users) != 1:
            continue
        x, x_val = first.args[0], _val(first.args[0])
        shape = list(first.args[1])
        if x_val is None or x_val.dim() != 4 or len(shape) != 5:
            continue
        groups, per_group = _int(shape[1]), _int(shape[2])
        channels = _int(x_val.shape[1]) if isinstance(x_val.shape[1], int) else None
        if groups is None or per_group is None or channels != groups * per_group:
            continue
        node = next(iter(first.users))
        if node.target != aten.transpose.int or sorted(d % 5 for d in node.args[1:3]) != [1, 2]:
            continue
        while len(node.users) == 1 and next(iter(node.users)).target in (aten.contiguous.default,
                                                                       aten.clone.default):
            node = next(iter(node.users))
        if len(node.users) != 1:
            continue
        last = next(iter(node.users))
        last_val = _val(last)
        if last.target not in views or last_val is None or last_val.dim() != 4:
            continue
        perm = torch.tensor([(j % groups) * per_group + j // groups for j in range(channels)])
        name = f"_channel_shuffle_perm_{count}"
        while hasattr(gm, name):
            name += "_"
        gm.register_buffer(name, perm)
        with gm.graph.inserting_before(last):
            index = gm.graph.get_attr(name)
            fake_mode = getattr(x_val, "fake_mode", None)
            if fake_mode is not None:
                index.meta["val"] = fake_mode.from_tensor(perm, static_shapes=True)
            out = gm.graph.call_function(aten.index_select.default, (x, 1, index))
            out.meta = dict(last.meta)
        last.replace_all_uses_with(out)
        count += 1
    return count


def _constant(gm: GraphModule, like: Node, value: float, stem: str) -> Node:
    """A scalar float tensor buffer read by a get_attr node (annotators can quantize it)."""
    name = stem
    i = 0
    while hasattr(gm, name):
        i += 1
        name = f"{stem}_{i}"
    tensor = torch.tensor(value, dtype=torch.float32)
    gm.register_buffer(name, tensor)
    node = gm.graph.get_attr(name)
    fake_mode = getattr(_val(like), "fake_mode", None)
    if fake_mode is not None:
        node.meta["val"] = fake_mode.from_tensor(tensor, static_shapes=True)
    return node


def _hard_sigmoid(gm: GraphModule, x: Node, like: Node) -> Node:
    """Insert ``hardtanh(x + 3, 0, 6) * (1/6)`` before ``like``; returns the output node."""
    three = _constant(gm, like, 3.0, "_hard_sigmoid_offset")
    shifted = gm.graph.call_function(aten.add.Tensor, (x, three))
    clamped = gm.graph.call_function(aten.hardtanh.default, (shifted, 0.0, 6.0))
    scaled = gm.graph.call_function(aten.mul.Tensor, (clamped, 1.0 / 6.0))
    for node, role in ((shifted, "add"), (clamped, "clamp"), (scaled, "scale")):
        node.meta = dict(like.meta)
        node.meta[HARD_SIGMOID_TAG] = role
    return scaled


@register_pass("decompose_hard_activations")
def _decompose_hard_activations(gm: GraphModule) -> int:
    count = 0
    sigmoids = (aten.hardsigmoid.default, aten.hardsigmoid_.default)
    swishes = (aten.hardswish.default, aten.hardswish_.default)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in sigmoids + swishes:
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            out = _hard_sigmoid(gm, x, node)
            if node.target in swishes:
                out = gm.graph.call_function(aten.mul.Tensor, (x, out))
                out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        count += 1
    return count
