"""EdgeQuantizer: where fake-quant goes so that ONNX Runtime's CPU EP runs integer kernels.

Why our own quantizer: torchao's stock ones either leave float convs in ORT (X86Inductor, int8
activations) or live in ``torchao.testing`` (XNNPACK, deprecated). The policy here targets ORT's
QDQ fusions on x86:

* weights int8, symmetric, per output channel (-127..127); activations uint8, per-tensor affine
  (ORT's x86 QLinearConv/QGemm fusions want u8 activations x s8 weights). With
  ``dense_weight_qmax=64`` (``quant.weight_range=int7``) dense conv and linear weights train on the
  7-bit grid that AVX2's saturating kernels compute exactly; depthwise convs keep 127 (``weight_format``);
* a *unit* is quantized at its inputs and at its last node only: ``conv[->bn][->relu|relu6]``,
  ``linear[->relu|relu6]``, ``add[->relu]``. With no QuantizeLinear between conv and ReLU/Clip,
  ORT drops the activation and emits one QLinearConv (what makes EfficientNet-Lite fast);
* ops ORT has integer kernels for are quantized on every side: add, mul, cat, sigmoid, avg pools
  (QLinearAdd/Mul/Concat/Sigmoid/(Global)AveragePool). ``fx_passes`` first rewrites SiLU to
  ``x * sigmoid(x)``, the SE ``mean`` to a global average pool and hardswish/hardsigmoid to
  ``relu6(x + 3) / 6`` forms, the latter with fixed ranges (0..6 and 0..1 on matching grids) so the
  ``/ 6`` is a free rescale: MobileNetV3 runs without a float island;
* ops ORT has no integer kernel for (gelu, tanh, stand-alone BN, ...) are quantized on both sides
  so they stay short float islands between integer neighbours (listed by ``inspect_ort_graph``);
* data-movement ops (max pool, reshape, split, index_select, ...) share their input's qparams, so
  ORT drops their Q/DQ pairs and moves uint8 data;
* biases are not annotated: ORT rounds them to int32 itself; ``bias_rounding`` makes the fake-quant
  graph and the converted one compute that same rounding;
* every conv is integer by default; with ``float_stem`` an RGB stem conv without a max pool after
  it computes in float (ORT's u8s8 kernel is slower than its FP32 one for 3 input channels) and
  only its output is quantized: a speed option for MobileNetV3, reported as a float node.

Annotators are registered in order; the first one to claim a node wins.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
    get_module_name_filter,
)

from edgeqat.quant.fx_passes import HARD_SIGMOID_TAG, apply_passes

__all__ = [
    "EdgeQuantizer",
    "QuantSpecs",
    "list_annotators",
    "register_annotator",
]

aten = torch.ops.aten
_KEY = "quantization_annotation"
_EPS = 2**-12  # smallest scale the observers may produce (torchao's default for int8 backends)

NodeFilter = Callable[[Node], bool]


class WeightFakeQuantize(FakeQuantize):
    """Weight fake-quant that trains against exactly the int8 weights convert will export.

    Not the fused kernel: for a symmetric [-127, 127] range its C++ qparams use 255 steps
    (``|w|max / 127.5``) while convert takes the observer's (``|w|max / 127``), so training would
    see other weights than the exported model (up to one step per weight, compounding through a
    MobileNet). And a weight's qparams depend on the weight alone: called before any observation
    (validation before the first training step) it observes once instead of using a placeholder.
    """

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if not self.observer_enabled[0] and self.is_per_channel and self.scale.numel() != X.shape[self.ch_axis]:
            self.activation_post_process(X.detach())
            scale, zero_point = self.calculate_qparams()
            self.scale.resize_(scale.shape).copy_(scale)
            self.zero_point.resize_(zero_point.shape).copy_(zero_point)
        return super().forward(X)


@dataclass(frozen=True)
class QuantSpecs:
    """The quantization specs every annotator draws from (one policy, one place)."""

    activation: QuantizationSpec
    weight: QuantizationSpec  # depthwise convs (their ORT kernel is exact on every CPU)
    dense_weight: QuantizationSpec  # dense convs and linears: int8, or int7 for a saturating target
    unit_interval: FixedQParamsQuantizationSpec  # outputs in [0, 1]: sigmoid
    signed_unit_interval: FixedQParamsQuantizationSpec  # outputs in [-1, 1]: tanh
    zero_to_six: FixedQParamsQuantizationSpec  # relu6(x + 3) inside hardsigmoid
    hard_sigmoid: FixedQParamsQuantizationSpec  # its "* 1/6": the same grid, rescaled
    float_stem: bool = False  # policy, not a spec: the RGB stem conv may compute in float (_is_float_stem)

    @classmethod
    def create(cls, qat: bool = True, dense_weight_qmax: int = 127) -> QuantSpecs:
        """uint8 per-tensor activations and int8 per-channel symmetric weights, QAT or PTQ observers.

        ``dense_weight_qmax`` bounds |w_q| of dense conv/linear weights (64: ``quant.weight_range=int7``).
        """
        if not 1 <= dense_weight_qmax <= 127:
            raise ValueError(f"dense_weight_qmax must lie in [1, 127], got {dense_weight_qmax}")
        if qat:
            act_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=_EPS)
            w_ctr = WeightFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, eps=_EPS)
        else:
            act_ctr = MinMaxObserver.with_args(eps=_EPS)
            w_ctr = PerChannelMinMaxObserver.with_args(eps=_EPS)
        activation = QuantizationSpec(
            dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
            observer_or_fake_quant_ctr=act_ctr,
        )
        weight = QuantizationSpec(
            dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
            ch_axis=0, observer_or_fake_quant_ctr=w_ctr,
        )
        dense_weight = dataclasses.replace(weight, quant_min=-dense_weight_qmax, quant_max=dense_weight_qmax)
        signed = FixedQParamsQuantizationSpec(
            dtype=torch.uint8, scale=2.0 / 256.0, zero_point=128, quant_min=0, quant_max=255,
            qscheme=torch.per_tensor_affine,
        )
        # relu6(x + 3) on a grid of 6/256 (top step 5.977, so ORT still drops the clip), then "* 1/6"
        # onto 1/256: one grid onto the other exactly, a rescale, not a requantization. Not 6/255:
        # there x = 0 gives 3 / (6/255) = 127.5 steps, a tie that torch's float quantize and ORT's
        # integer add break differently (measured: 5 % of a MobileNetV3 stem, 1 step each).
        zero_to_six = FixedQParamsQuantizationSpec(
            dtype=torch.uint8, scale=6.0 / 256.0, zero_point=0, quant_min=0, quant_max=255,
            qscheme=torch.per_tensor_affine,
        )
        hard_sigmoid = FixedQParamsQuantizationSpec(
            dtype=torch.uint8, scale=1.0 / 256.0, zero_point=0, quant_min=0, quant_max=255,
            qscheme=torch.per_tensor_affine,
        )
        unit = FixedQParamsQuantizationSpec(
            dtype=torch.uint8, scale=1.0 / 255.0, zero_point=0, quant_min=0, quant_max=255,
            qscheme=torch.per_tensor_affine,
        )
        return cls(activation=activation, weight=weight, dense_weight=dense_weight, unit_interval=unit,
                   signed_unit_interval=signed, zero_to_six=zero_to_six, hard_sigmoid=hard_sigmoid)


Annotator = Callable[[GraphModule, QuantSpecs, NodeFilter], None]
_ANNOTATORS: dict[str, Annotator] = {}


def register_annotator(name: str) -> Callable[[Annotator], Annotator]:
    """Add an annotator; registration order is application order (fused units before single ops)."""

    def decorator(fn: Annotator) -> Annotator:
        if name in _ANNOTATORS:
            raise ValueError(f"Annotator {name!r} is already registered; pick another name.")
        _ANNOTATORS[name] = fn
        return fn

    return decorator


def list_annotators() -> list[str]:
    """Names of the registered annotators, in the order they run."""
    return list(_ANNOTATORS)


class EdgeQuantizer(Quantizer):
    """PT2E quantizer targeting ONNX Runtime's CPU integer kernels (see module docstring).

    Args:
        float_modules: qualified names of submodules to leave in float (the fallback for ops that
            cannot be quantized or exported). Their ops get no fake-quant.
        qat: fake-quant modules for training (True) or plain observers for calibration (False).
        rewrites: apply the exact graph rewrites of ``fx_passes`` (SiLU split, mean -> global
            pool, channel shuffle -> index_select, hard activations) before annotating.
        float_stem: keep an RGB stem conv float when no max pool follows it (see ``_is_float_stem``).
        dense_weight_qmax: largest |w_q| of dense conv/linear weights; 64 for a target whose dense
            kernels saturate (``WeightFormat.dense_qmax``), 127 otherwise.
    """

    def __init__(
        self, float_modules: Sequence[str] = (), qat: bool = True, rewrites: bool = True, float_stem: bool = False,
        dense_weight_qmax: int = 127,
    ) -> None:
        super().__init__()
        self.float_modules = tuple(float_modules)
        self.specs = dataclasses.replace(QuantSpecs.create(qat=qat, dense_weight_qmax=dense_weight_qmax),
                                         float_stem=float_stem)
        self.rewrites = rewrites
        self.rewrite_counts: dict[str, int] = {}

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        if self.rewrites:
            self.rewrite_counts = apply_passes(model)
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        in_float_module = [get_module_name_filter(name) for name in self.float_modules]

        def allowed(node: Node) -> bool:
            return not any(f(node) for f in in_float_module)

        for annotator in _ANNOTATORS.values():
            annotator(model, self.specs, allowed)
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to check after annotation; export-time checks live in ``prepare_qat``."""


# --------------------------------------------------------------------------- helpers


def _is_annotated(node: Node) -> bool:
    ann = node.meta.get(_KEY)
    return ann is not None and ann._annotated


def _annotate(
    node: Node,
    inputs: dict[Node, QuantizationSpecBase] | None = None,
    output: QuantizationSpecBase | None = None,
) -> None:
    node.meta[_KEY] = QuantizationAnnotation(input_qspec_map=inputs or {}, output_qspec=output, _annotated=True)


def _mark(nodes: Sequence[Node]) -> None:
    """Claim nodes inside a unit so later annotators leave them alone."""
    for n in nodes:
        if not _is_annotated(n):
            _annotate(n)


def _is_float_tensor(arg: object) -> bool:
    if not isinstance(arg, Node):
        return False
    val = arg.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


def _calls(gm: GraphModule, targets: set) -> Iterator[Node]:
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in targets:
            yield node


def _sole_user(node: Node, targets: set) -> Node | None:
    """The only consumer of ``node`` if it is one of ``targets`` taking ``node`` as first input."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.op == "call_function" and user.target in targets and user.args and user.args[0] is node:
        return user
    return None


def _has_output_qspec(node: Node) -> bool:
    ann = node.meta.get(_KEY)
    return ann is not None and ann.output_qspec is not None


_CONV = {aten.conv1d.default, aten.conv2d.default}
_LINEAR = {aten.linear.default}
_BATCH_NORM = {aten.batch_norm.default}
# Clamp-like activations ORT removes in front of a QuantizeLinear whose range they already cover.
_CLAMP_ACTS = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
_ADD = {aten.add.Tensor, aten.add_.Tensor}
_MUL = {aten.mul.Tensor, aten.mul_.Tensor}


def _is_float_stem(op: Node) -> bool:
    """A conv reading the model input with <= 4 channels (RGB stem).

    ORT's u8s8 kernels are slower than its FP32 NCHWc stem kernel when the reduction is that
    narrow (mobilenetv3_small stem: 0.56 ms int8 vs 0.15 ms FP32 at 224x224), so the stem conv
    computes in float and only its output (after BN/activation) is quantized. Not when a max pool
    follows (ResNet, ShuffleNet): ORT then moves the QuantizeLinear in front of the pool and runs
    it as a slow NCHW uint8 MaxPool (resnet18: 6.3 -> 11.5 ms), while an int8 stem keeps the pool
    in the NHWC int8 chain.
    """
    x, weight = op.args[0], op.args[1]
    w = weight.meta.get("val") if isinstance(weight, Node) else None
    return (
        isinstance(x, Node) and x.op == "placeholder" and isinstance(w, torch.Tensor)
        and w.dim() == 4 and w.shape[1] <= 4
    )


def _is_depthwise(op: Node) -> bool:
    """One input and one output channel per group: ORT's depthwise kernel, exact on every CPU."""
    w = op.args[1].meta.get("val") if isinstance(op.args[1], Node) else None
    groups = op.args[6] if op.target in _CONV and len(op.args) > 6 else 1
    return isinstance(w, torch.Tensor) and groups > 1 and w.shape[1] == 1 and w.shape[0] == groups


def _annotate_weighted_units(
    gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter, ops: set, with_bn: bool
) -> None:
    for op in _calls(gm, ops):
        if _is_annotated(op) or not allowed(op) or not _is_float_tensor(op.args[0]):
            continue
        unit = [op]
        if with_bn:
            bn = _sole_user(unit[-1], _BATCH_NORM)
            if bn is not None and allowed(bn) and not _is_annotated(bn):
                unit.append(bn)
        act = _sole_user(unit[-1], _CLAMP_ACTS)
        if act is not None and allowed(act) and not _is_annotated(act):
            unit.append(act)
        x, weight = op.args[0], op.args[1]
        weight_spec = specs.weight if _is_depthwise(op) else specs.dense_weight
        inputs: dict[Node, QuantizationSpecBase] = {x: specs.activation, weight: weight_spec}
        if specs.float_stem and _is_float_stem(op) and _sole_user(unit[-1], {aten.max_pool2d.default}) is None:
            # Float conv, quantized unit output. The conv stays unannotated (torchao's conv-BN
            # fusion expects a conv annotation to carry input qspecs).
            _mark(unit[1:-1])
            _annotate(unit[-1], output=specs.activation)
            continue
        if len(unit) == 1:
            _annotate(op, inputs, specs.activation)
        else:
            _annotate(op, inputs)
            _mark(unit[1:-1])
            _annotate(unit[-1], output=specs.activation)


@register_annotator("conv_bn_act")
def _annotate_conv_units(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """conv[->batch_norm][->relu|relu6|hardtanh]: one QLinearConv in ORT, BN folded at convert."""
    _annotate_weighted_units(gm, specs, allowed, _CONV, with_bn=True)


@register_annotator("linear_act")
def _annotate_linear_units(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """linear[->relu|relu6]: QGemm in ORT."""
    _annotate_weighted_units(gm, specs, allowed, _LINEAR, with_bn=False)


@register_annotator("hard_sigmoid")
def _annotate_hard_sigmoids(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """``hardtanh(x + 3, 0, 6) * 1/6`` from ``fx_passes``: one QLinearAdd (clip fused) and a rescale."""
    for add in gm.graph.nodes:
        if add.meta.get(HARD_SIGMOID_TAG) != "add" or _is_annotated(add) or not allowed(add):
            continue
        clamp = _sole_user(add, _CLAMP_ACTS)
        scale = _sole_user(clamp, _MUL) if clamp is not None else None
        if scale is None or scale.meta.get(HARD_SIGMOID_TAG) != "scale":
            continue
        x, offset = add.args
        _annotate(add, {x: specs.activation, offset: specs.activation})
        _annotate(clamp, output=specs.zero_to_six)
        _annotate(scale, {clamp: SharedQuantizationSpec(clamp)}, specs.hard_sigmoid)


def _annotate_binary(
    gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter, ops: set, fuse_relu: bool
) -> None:
    for op in _calls(gm, ops):
        if _is_annotated(op) or not allowed(op):
            continue
        a, b = op.args[0], op.args[1]
        # Tensor (x) scalar and integer ops (BN's num_batches_tracked += 1) stay as they are.
        if not (_is_float_tensor(a) and _is_float_tensor(b)):
            continue
        inputs: dict[Node, QuantizationSpecBase] = {a: specs.activation, b: specs.activation}
        act = _sole_user(op, _CLAMP_ACTS) if fuse_relu else None
        if act is not None and allowed(act) and not _is_annotated(act):
            _annotate(op, inputs)
            _annotate(act, output=specs.activation)
        else:
            _annotate(op, inputs, specs.activation)


@register_annotator("add_act")
def _annotate_adds(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """add[->relu] of two tensors: QLinearAdd (residuals, SE-free blocks)."""
    _annotate_binary(gm, specs, allowed, _ADD, fuse_relu=True)


@register_annotator("mul")
def _annotate_muls(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """mul of two tensors: QLinearMul (the SE gate, x * sigmoid(x) of SiLU)."""
    _annotate_binary(gm, specs, allowed, _MUL, fuse_relu=False)


@register_annotator("cat")
def _annotate_cats(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """cat with one shared scale for all inputs and the output, so QLinearConcat is a copy."""
    for cat in _calls(gm, {aten.cat.default}):
        inputs = list(cat.args[0])
        if _is_annotated(cat) or not allowed(cat) or not inputs or not all(map(_is_float_tensor, inputs)):
            continue
        first = inputs[0]
        shared = SharedQuantizationSpec((first, cat))
        qspecs: dict[Node, QuantizationSpecBase] = {first: specs.activation}
        for other in inputs[1:]:
            qspecs.setdefault(other, shared)
        _annotate(cat, qspecs, shared)


@register_annotator("avg_pool")
def _annotate_avg_pools(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """Average pools with their own output scale: QLinear(Global)AveragePool.

    Not the input's scale: a mean of n values on one grid lands exactly halfway between two steps
    of that grid once in ~n cases (1.6 % at 8x8), and such ties round one way in ORT's integer
    kernel and either way in torch's float mean, depending on summation order. With a scale of its
    own (the mean's range is narrower, so the grid is also finer) ties practically never occur.
    """
    pools = {aten.adaptive_avg_pool2d.default, aten.avg_pool2d.default}
    for pool in _calls(gm, pools):
        x = pool.args[0]
        if _is_annotated(pool) or not allowed(pool) or not _is_float_tensor(x):
            continue
        _annotate(pool, {x: specs.activation}, specs.activation)


# Output range known in advance: fixed qparams, no observer to learn.
_UNIT_INTERVAL_OPS = {aten.sigmoid.default, aten.sigmoid_.default, aten.hardsigmoid.default,
                      aten.hardsigmoid_.default}
_SIGNED_UNIT_OPS = {aten.tanh.default, aten.tanh_.default}
# Quantized on both sides: ORT has an integer kernel (leaky_relu) or runs them as a float island
# between integer neighbours (the rest). Either way the neighbours stay integer.
_UNARY_OPS = {
    aten.hardswish.default, aten.hardswish_.default, aten.silu.default, aten.silu_.default,
    aten.gelu.default, aten.elu.default, aten.leaky_relu.default, aten.leaky_relu_.default,
    aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default,
    aten.batch_norm.default, aten.mean.dim, aten.softmax.int, aten.mish.default,
}


@register_annotator("unary")
def _annotate_unary(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """Single-input activations (and stand-alone BN / mean) quantized at input and output."""
    for node in _calls(gm, _UNIT_INTERVAL_OPS | _SIGNED_UNIT_OPS | _UNARY_OPS):
        x = node.args[0]
        if _is_annotated(node) or not allowed(node) or not _is_float_tensor(x) or not _is_float_tensor(node):
            continue
        if node.target in _UNIT_INTERVAL_OPS:
            out: QuantizationSpecBase = specs.unit_interval
        elif node.target in _SIGNED_UNIT_OPS:
            out = specs.signed_unit_interval
        else:
            out = specs.activation
        _annotate(node, {x: specs.activation}, out)


# Ops that only move or select values: they reuse their input's scale and zero point.
_SHARED_QPARAM_OPS = {
    aten.max_pool2d.default, aten.flatten.using_ints, aten.view.default, aten.reshape.default,
    aten._unsafe_view.default, aten.permute.default, aten.transpose.int, aten.squeeze.dim,
    aten.squeeze.dims, aten.unsqueeze.default, aten.index_select.default, aten.clone.default,
    aten.contiguous.default, aten.slice.Tensor, aten.dropout.default, aten.pixel_shuffle.default,
    aten.pixel_unshuffle.default, aten.expand.default, aten.alias.default,
}
_SPLIT_OPS = {aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int}


@register_annotator("shared_qparams")
def _propagate_shared(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """Data movement after a quantized producer shares its qparams (ORT then drops the Q/DQ pair)."""
    for node in list(gm.graph.nodes):  # topological order: chains propagate
        if node.op != "call_function" or _is_annotated(node) or not allowed(node) or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, Node) or not _has_output_qspec(src):
            continue
        if node.target in _SHARED_QPARAM_OPS and _is_float_tensor(node):
            _annotate(node, {src: SharedQuantizationSpec(src)}, SharedQuantizationSpec(src))
        elif node.target in _SPLIT_OPS:
            _annotate(node, {src: SharedQuantizationSpec(src)})
            for item in node.users:
                if item.target is operator.getitem and _is_float_tensor(item) and not _is_annotated(item):
                    _annotate(item, output=SharedQuantizationSpec((src, node)))


@register_annotator("reuse_fixed_qparams")
def _reuse_fixed_qparams(gm: GraphModule, specs: QuantSpecs, allowed: NodeFilter) -> None:
    """Consumers of fixed-qparam outputs (sigmoid) read them as-is instead of re-quantizing."""
    for node in gm.graph.nodes:
        ann = node.meta.get(_KEY)
        if ann is None:
            continue
        for src, qspec in list(ann.input_qspec_map.items()):
            src_ann = src.meta.get(_KEY) if isinstance(src, Node) else None
            if (
                qspec is specs.activation
                and src_ann is not None
                and isinstance(src_ann.output_qspec, FixedQParamsQuantizationSpec)
            ):
                ann.input_qspec_map[src] = SharedQuantizationSpec(src)
