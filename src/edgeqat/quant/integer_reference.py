"""The converted graph computed the way an integer kernel computes it: the INT8 file's exact reference.

Torch's fake-quant and the converted graph compute every conv/linear in float32 and then round
``y / s_y``. An integer runtime (ORT's QLinearConv/QGemm, as the ONNX operators define them)
accumulates ``(x_q - z_x) * w_q`` in int32, adds the int32 bias, multiplies by the float32
multiplier ``s_x * s_w / s_y`` and rounds half to even. The two agree except where the exact value
is a rounding tie, k + 1/2 to within float32's error (a few activations per ten million), and a deep
net with hard-sigmoid gates carries one such step into up to 14 output steps (MobileNetV3, measured
on every CPU, ``drift.py``). A float reference cannot tell that from a kernel computing other
numbers by one step.

:class:`IntegerReference` runs the converted graph in torch with every ``dequantize -> conv/linear
[-> relu/hardtanh] -> quantize`` group replaced by that integer arithmetic: the products summed exactly
(float32 where no partial sum can reach 2**24, else float64), the bias on the int32 grid,
the multiplier rounded to float32 in ORT's order (``qlinearconv.cc``: ``x_scale * w_scale[c] /
y_scale``), the activation applied as a clamp in the integer domain (quantization is monotonic, so
``quantize(clamp(v))`` is ``clamp(quantize(v))``). Every other op (add, mul, pooling, hard-sigmoid)
stays as fake-quant computes it. Against this reference a kernel that computes the operators'
integers shows 0 conv steps; saturation (AVX2's ``vpmaddubsw``) or any other integer error shows
wherever it happens, however small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.fx import GraphModule, Interpreter, Node

__all__ = ["IntegerReference", "integer_reference_logits"]

_qd = torch.ops.quantized_decomposed
_aten = torch.ops.aten
_QUANTIZE = {_qd.quantize_per_tensor.default}
_DEQUANT_ACT = {_qd.dequantize_per_tensor.default}
_DEQUANT_WEIGHT = {_qd.dequantize_per_channel.default, _qd.dequantize_per_tensor.default}
_CONV = {_aten.conv2d.default, _aten.conv1d.default}
_LINEAR = {_aten.linear.default}
_ACT = {_aten.relu.default, _aten.relu_.default, _aten.hardtanh.default, _aten.hardtanh_.default}


@dataclass(frozen=True)
class _IntegerGroup:
    """One ``dq(x), dq(w) -> conv/linear [-> act] -> q`` group of the converted graph."""

    op: Node  # the conv/linear
    x_dq: Node
    w_dq: Node
    act: Node | None


def _group(quantize: Node) -> _IntegerGroup | None:
    """The integer group ending in ``quantize``, or None where it is not one."""
    if quantize.target not in _QUANTIZE:
        return None
    producer = quantize.args[0]
    act = None
    if isinstance(producer, Node) and producer.target in _ACT and len(producer.users) == 1:
        act, producer = producer, producer.args[0]
    if not isinstance(producer, Node) or producer.target not in _CONV | _LINEAR or len(producer.users) != 1:
        return None
    x_dq, w_dq = producer.args[0], producer.args[1]
    if not (isinstance(x_dq, Node) and x_dq.target in _DEQUANT_ACT and isinstance(w_dq, Node)
            and w_dq.target in _DEQUANT_WEIGHT):
        return None
    return _IntegerGroup(producer, x_dq, w_dq, act)


class IntegerReference(Interpreter):
    """Runs a converted graph (``quant.convert``) with integer-exact conv/linear requantization.

    ``groups`` counts the groups computed in integers. A converted graph with none (every conv and
    linear in ``float_modules``) is its own reference: all its quantized ops are float-defined. A graph
    with no quantize op at all is refused, since it is not a converted graph and would silently be the
    float reference again.
    """

    def __init__(self, converted: GraphModule) -> None:
        super().__init__(converted, garbage_collect_values=False)  # groups read their inputs' q tensors
        self._groups = {node: g for node in converted.graph.nodes if (g := _group(node)) is not None}
        # the float conv/linear (and activation) a group replaces: never computed
        self._replaced = {n for g in self._groups.values() for n in (g.op, g.act) if n is not None}
        if not any(node.target in _QUANTIZE for node in converted.graph.nodes):
            raise ValueError("no quantize op in the graph: is it quant.convert's output?")

    @property
    def groups(self) -> int:
        return len(self._groups)

    def run_node(self, n: Node):
        if n in self._replaced:
            return None
        group = self._groups.get(n)
        if group is None:
            return super().run_node(n)
        return self._integer_output(group, n)

    def _value(self, arg):
        return self.env[arg] if isinstance(arg, Node) else arg

    def _accumulate(self, g: _IntegerGroup, x_int: torch.Tensor, w_int: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The int32 accumulator of ``g`` (as float64) and the shape that broadcasts a per-channel vector onto it."""
        if g.op.target in _CONV:
            acc = g.op.target(x_int, w_int, None, *[self._value(a) for a in g.op.args[3:]])
            return acc.double(), (1, -1) + (1,) * (acc.dim() - 2)
        acc = torch.nn.functional.linear(x_int, w_int)
        return acc.double(), (1,) * (acc.dim() - 1) + (-1,)

    def _integer_output(self, g: _IntegerGroup, quantize: Node) -> torch.Tensor:
        x_q, s_x, z_x = (self._value(a) for a in g.x_dq.args[:3])
        w_q, s_w, z_w = (self._value(a) for a in g.w_dq.args[:3])
        _, s_y, z_y, q_min, q_max, dtype = (self._value(a) for a in quantize.args[:6])
        out_channels = w_q.shape[0]
        s_w = torch.as_tensor(s_w, dtype=torch.float32).reshape(-1).expand(out_channels)
        z_w = torch.as_tensor(z_w, dtype=torch.float64).reshape(-1).expand(out_channels)
        x_int = x_q.to(torch.float64) - float(z_x)
        w_int = w_q.to(torch.float64) - z_w.reshape(-1, *[1] * (w_q.dim() - 1))
        # float32 sums integers exactly while every partial sum stays below 2**24 (depthwise convs,
        # and 7-bit weights up to 1,000 terms): then it is as exact as float64 and many times faster
        terms = w_q[0].numel()
        fast = terms * float(x_int.abs().max()) * float(w_int.abs().max()) < 2**24
        acc, channel_shape = self._accumulate(g, x_int.float() if fast else x_int, w_int.float() if fast else w_int)
        if fast and not torch.equal(acc, acc.round()):  # a kernel that does not sum directly (never seen)
            acc, channel_shape = self._accumulate(g, x_int, w_int)
        bias_scale = torch.tensor(s_x, dtype=torch.float32) * s_w  # float32, as ORT's bias quantization
        bias = self._value(g.op.args[2]) if len(g.op.args) > 2 else g.op.kwargs.get("bias")
        if bias is not None:
            acc = acc + torch.round(bias.to(torch.float64) / bias_scale.to(torch.float64)).reshape(channel_shape)
        multiplier = (bias_scale / torch.tensor(s_y, dtype=torch.float32)).reshape(channel_shape)
        q = torch.round(acc.to(torch.float32) * multiplier) + z_y
        low, high = float(q_min), float(q_max)
        if g.act is not None:
            act_low, act_high = (0.0, None) if g.act.target in (_aten.relu.default, _aten.relu_.default) else (
                float(self._value(g.act.args[1])) if len(g.act.args) > 1 else -1.0,
                float(self._value(g.act.args[2])) if len(g.act.args) > 2 else 1.0)
            low = max(low, float(np.round(np.float32(act_low) / np.float32(s_y))) + z_y)
            if act_high is not None:
                high = min(high, float(np.round(np.float32(act_high) / np.float32(s_y))) + z_y)
        return torch.clamp(q, low, high).to(dtype)


def integer_reference_logits(converted: GraphModule, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of ``converted`` on ``images`` (N, C, H, W float32) with integer-exact conv/linear."""
    reference = IntegerReference(converted)
    with torch.no_grad():
        outputs = [reference.run(torch.from_numpy(np.ascontiguousarray(images[i:i + batch], dtype=np.float32)))
                   for i in range(0, len(images), batch)]
    return torch.cat(outputs).numpy()
