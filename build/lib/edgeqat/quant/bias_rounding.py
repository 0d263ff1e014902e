"""The int32 bias of ORT's integer kernels, simulated in the fake-quant graph and baked at convert.

ONNX Runtime runs QLinearConv/QGemm with an int32 bias at scale ``input_scale * weight_scale``:
its ``WeightBiasQuantization`` transform rounds the float bias of every QDQ conv/linear (for a conv
followed by BN, the bias BN folds into it). One rounding is below one accumulator step, but it
shifts a whole channel the same way, and through ~50 requantized layers the shifts add up. Measured
on random-init efficientnet_lite0 (one-off): ORT at ``ORT_DISABLE_ALL`` (float bias) was 0.14 output
steps from torch on average, the same file with the bias rounded 4.7 steps; trained depthwise nets
flipped 2-2.5 % of their test answers between torch and ORT.

So the torch side computes the same thing ORT will:

* ``insert_bias_rounding`` (prepare) adds a ``BiasRounding`` node after every integer conv/linear
  (after its BN when one is folded into it) that moves the output by ``round(b / s) * s - b``,
  straight-through for gradients. A conv+BN folds only when BN normalizes with its running
  statistics (eval, or BN frozen), so there the node is active only then (``QATModel.sync_mode``).
* ``round_converted_biases`` (convert) writes the rounded bias into the converted graph, so the
  exported file carries the bias QAT used and ORT's own rounding leaves it unchanged.
"""

from __future__ import annotations

import operator

import torch
from torch import nn
from torch.fx import GraphModule, Node

from edgeqat.quant.quantizer import _CONV, _LINEAR, _sole_user

__all__ = ["BiasRounding", "insert_bias_rounding", "remove_bias_rounding", "round_bias", "round_converted_biases",
           "set_bias_rounding_mode"]

aten = torch.ops.aten
_INT32 = torch.iinfo(torch.int32)


def round_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``bias`` on the int32 grid of ``scale`` (per output channel), as ORT quantizes it."""
    return torch.clamp(torch.round(bias / scale), _INT32.min, _INT32.max) * scale


class BiasRounding(nn.Module):
    """Adds ``round(b / s) * s - b`` to a conv/linear output; ``b`` is the bias ORT will quantize.

    No parameters or buffers: the bias, BN statistics and scales arrive as graph inputs, so
    checkpoints and ``state_dict`` keys are the same with or without it.

    Args:
        channel_dim: the output dimension holding channels (1 for conv, -1 for linear).
        folds_bn: the bias is the one BN folds into the conv at convert; only valid while BN uses
            its running statistics (``active`` follows that).
    """

    def __init__(self, channel_dim: int, folds_bn: bool) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.folds_bn = folds_bn
        self.active = True

    def forward(
        self,
        y: torch.Tensor,
        input_scale: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        bn: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float] | None = None,
    ) -> torch.Tensor:
        if not self.active:
            return y
        channels = y.shape[self.channel_dim]
        b = torch.zeros(channels, dtype=y.dtype, device=y.device) if bias is None else bias
        if bn is not None:
            weight, shift, mean, var, eps = bn
            b = shift + (b - mean) * weight / torch.sqrt(var + eps)
        b = b.detach()
        correction = round_bias(b, input_scale * weight_scale) - b
        shape = [1] * y.dim()
        shape[self.channel_dim] = channels
        return y + correction.reshape(shape)


def _fake_quant_module(gm: GraphModule, node: object) -> str | None:
    """Qualified name of the fake-quant module producing ``node``, if it is one."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    if isinstance(node, Node) and node.op == "call_module":
        if isinstance(gm.get_submodule(node.target), FakeQuantizeBase):
            return node.target
    return None


def _folded_bn(conv: Node) -> tuple[Node, Node | None] | None:
    """(batch_norm, conv bias) of torchao's QAT conv-BN pattern ``conv / sf [+ bias] -> batch_norm``."""
    div = _sole_user(conv, {aten.div.Tensor})
    if div is None:
        return None
    bias = None
    nxt = _sole_user(div, {aten.add.Tensor})
    if nxt is not None:
        reshape = nxt.args[1]
        bias = reshape.args[0] if isinstance(reshape, Node) and reshape.target is aten.reshape.default else None
        if bias is None:
            return None
    bn = _sole_user(nxt if nxt is not None else div, {aten.batch_norm.default})
    return (bn, bias) if bn is not None else None


def insert_bias_rounding(gm: GraphModule) -> int:
    """Add a ``BiasRounding`` after each conv/linear whose input and weight are fake-quantized.

    Returns the number of nodes inserted. A conv with a float input (the float stem) keeps its float
    bias in ORT too and is skipped.
    """
    count = 0
    for op in list(gm.graph.nodes):
        if op.op != "call_function" or op.target not in _CONV | _LINEAR:
            continue
        input_fq, weight_fq = _fake_quant_module(gm, op.args[0]), _fake_quant_module(gm, op.args[1])
        if input_fq is None or weight_fq is None:
            continue
        folded = _folded_bn(op) if op.target in _CONV else None
        after, bias, bn_args = op, (op.args[2] if len(op.args) > 2 else None), None
        if folded is not None:
            after, bias = folded
            bn_args = (*after.args[1:5], after.args[7])
        name = f"bias_rounding_{count}"
        gm.add_submodule(name, BiasRounding(1 if op.target in _CONV else -1, folds_bn=folded is not None))
        with gm.graph.inserting_after(after):
            input_scale = gm.graph.get_attr(f"{input_fq}.scale")
        with gm.graph.inserting_after(input_scale):
            weight_scale = gm.graph.get_attr(f"{weight_fq}.scale")
        with gm.graph.inserting_after(weight_scale):
            node = gm.graph.call_module(name, (after, input_scale, weight_scale, bias, bn_args))
        after.replace_all_uses_with(node, delete_user_cb=lambda user: user is not node)
        count += 1
    if count:
        gm.recompile()
    return count


def remove_bias_rounding(gm: GraphModule) -> None:
    """Drop the ``BiasRounding`` nodes (before ``convert_pt2e``, whose BN fold they would hide)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), BiasRounding):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def set_bias_rounding_mode(gm: nn.Module, bn_uses_running_stats: bool) -> None:
    """Folded-BN roundings apply only while BN normalizes with running statistics."""
    for module in gm.modules():
        if isinstance(module, BiasRounding) and module.folds_bn:
            module.active = bn_uses_running_stats


def _constant(gm: GraphModule, arg: object) -> torch.Tensor | None:
    """A scale argument of a dequantize call: a literal or a constant attribute."""
    if isinstance(arg, Node) and arg.op == "get_attr":
        return operator.attrgetter(arg.target)(gm)
    if isinstance(arg, (int, float)):
        return torch.tensor(float(arg))
    return None


def round_converted_biases(gm: GraphModule) -> int:
    """Replace the float bias of each ``conv/linear(dequantize(x), dequantize(w), b)`` by its rounding.

    Returns the number of biases rounded.
    """
    count = 0
    for op in gm.graph.nodes:
        if op.op != "call_function" or op.target not in _CONV | _LINEAR or len(op.args) < 3:
            continue
        x_dq, w_dq, bias = op.args[:3]
        if not (_is_dequantize(x_dq) and _is_dequantize(w_dq)) or not isinstance(bias, Node) or bias.op != "get_attr":
            continue
        x_scale, w_scale = _constant(gm, x_dq.args[1]), _constant(gm, w_dq.args[1])
        if x_scale is None or w_scale is None:
            continue
        b = operator.attrgetter(bias.target)(gm)
        with torch.no_grad():
            b.copy_(round_bias(b, x_scale * w_scale))
        count += 1
    return count


def _is_dequantize(node: object) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and "dequantize_per" in str(node.target)
