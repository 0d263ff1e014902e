"""Step PREPARE: capture the model with torch.export and insert fake-quant with EdgeQuantizer."""

from __future__ import annotations

import copy
import difflib
import linecache
import traceback
from collections.abc import Sequence

import torch
from torch import nn
from torch.fx import GraphModule, Node

from edgeqat.quant._conv_bn_patterns import only_present_conv_kinds
from edgeqat.quant.bias_rounding import insert_bias_rounding
from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.qat_model import QATModel, set_graph_mode
from edgeqat.quant.quantizer import EdgeQuantizer
from edgeqat.quant.shapes import capture_with_dynamic_shapes
from edgeqat.quant.steps import QuantStep

__all__ = ["check_batchnorm", "prepare_qat"]

_BATCH_NORM = torch.ops.aten.batch_norm.default


def prepare_qat(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    float_modules: Sequence[str] = (),
    float_stem: bool = False,
    dense_weight_qmax: int = 127,
) -> QATModel:
    """Export ``model`` and insert QAT fake-quant; returns the trainable fake-quant model.

    ``model`` itself is left untouched: the graph is captured from a copy. (torch.export's module
    shares the captured parameters and BN buffers; training it would move the caller's FP32 model, and
    a second ``prepare_qat`` of that model would start from, and keep moving, the first one's state.)

    Batch, height and width stay dynamic where torch can keep them so (``quant.shapes``). The model is captured in eval mode, so no
    stochastic op (drop-path) is baked into the graph, then BN/dropout are switched to training.
    The graph is wrapped in ``QATModel`` so ``.train()``/``.eval()`` (including Lightning's direct
    ``training`` assignment), ``state_dict`` and deepcopy work as on any module.

    Args:
        model: FP32 model, ideally trained (QAT fine-tunes; it does not train from scratch).
        example_input: one batch shaped like the training input (N, C, H, W).
        float_modules: qualified submodule names to keep in float.
        float_stem: let an RGB stem conv with no max pool after it compute in float (faster in ORT
            for MobileNetV3, see ``EdgeQuantizer``); default: every conv is integer.
        dense_weight_qmax: largest |w_q| of dense conv/linear weights: 64 trains the 7-bit grid a
            saturating target computes exactly (``WeightFormat.dense_qmax``); depthwise keep 127.

    Raises:
        QuantizationError: a BatchNorm weight is exactly zero, a parameter is not finite, a name in
            ``float_modules`` does not exist, or the model cannot be exported (names the module).
    """
    _check_float_modules(model, float_modules)
    check_batchnorm(model)
    graph = _export(copy.deepcopy(model), example_input)
    set_graph_mode(graph, training=True)
    bn_args = _bn_args_by_running_var(graph)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    try:
        with only_present_conv_kinds(graph):
            quantizer = EdgeQuantizer(float_modules=float_modules, float_stem=float_stem,
                                      dense_weight_qmax=dense_weight_qmax)
            prepared = prepare_qat_pt2e(graph, quantizer)
    except Exception as exc:  # torchao raises plain exceptions/asserts
        raise QuantizationError(
            f"[{QuantStep.PREPARE.value}] inserting fake-quant failed: {type(exc).__name__}: {exc}. "
            f"Leave the offending module float with prepare_qat(..., float_modules=[...])."
        ) from exc
    _restore_bn_args(prepared, bn_args)
    insert_bias_rounding(prepared)
    if not _has_fake_quant(prepared):
        raise QuantizationError(
            f"[{QuantStep.PREPARE.value}] no op of {type(model).__name__} was quantized (no conv, linear, "
            "add, mul, cat or pool outside float_modules); refusing to call a float model INT8."
        )
    return QATModel(prepared)


def check_batchnorm(model: nn.Module) -> None:
    """Refuse BN weights that are exactly zero and non-finite parameters before QAT.

    The simulated conv-BN fold divides by ``gamma / sqrt(var + eps)``; a zero gamma (timm's
    ``zero_init_last`` on a fresh ResNet) makes the first QAT forward NaN. We raise instead of
    patching gamma, because a silently changed weight is worse than a clear stop.
    """
    bad_params = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad_params:
        raise QuantizationError(
            f"[{QuantStep.PREPARE.value}] parameters with NaN/Inf: {bad_params[:5]}; fix the FP32 "
            "training (lower LR, gradient clipping) before QAT."
        )
    zero = [
        f"{name} ({int((m.weight == 0).sum())}/{m.weight.numel()} channels)"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and (m.weight == 0).any()
    ]
    if zero:
        raise QuantizationError(
            f"[{QuantStep.PREPARE.value}] BatchNorm weight exactly 0 in {zero[:5]}"
            f"{' and more' if len(zero) > 5 else ''}: the QAT conv-BN fold divides by it (NaN). Start QAT "
            "from FP32-trained weights (warm-up epochs or init_checkpoint), or build timm models with "
            "zero_init_last=False."
        )


def _check_float_modules(model: nn.Module, float_modules: Sequence[str]) -> None:
    names = [n for n, _ in model.named_modules() if n]
    for name in float_modules:
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=3)
            raise QuantizationError(
                f"float_modules entry {name!r} is not a submodule of {type(model).__name__}."
                + (f" Did you mean {hint}?" if hint else f" Top-level submodules: {names[:10]}")
            )


def _export(model: nn.Module, example_input: torch.Tensor) -> GraphModule:
    if example_input.dim() < 2:
        raise QuantizationError(
            f"example_input must be a batch shaped (N, C, ...), got shape {tuple(example_input.shape)}"
        )
    if example_input.shape[0] == 1:  # torch.export specializes size-1 dims: keep the batch dynamic
        example_input = example_input.expand(2, *example_input.shape[1:]).contiguous()
    was_training = model.training
    model.eval()
    try:
        program = capture_with_dynamic_shapes(
            lambda dims: torch.export.export(model, (example_input,), dynamic_shapes=(dims,)),
            example_input, type(model).__name__,
        )
    except Exception as exc:
        raise QuantizationError(_describe_export_failure(model, exc)) from exc
    finally:
        model.train(was_training)
    return program.module()


def _describe_export_failure(model: nn.Module, exc: BaseException) -> str:
    """Name the innermost submodule (and source line) that torch.export could not trace."""
    names = {id(m): (n or "<root>") for n, m in model.named_modules()}
    where = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if id(owner) in names:
            code = linecache.getline(frame.f_code.co_filename, lineno).strip()
            where = f"module {names[id(owner)]} ({type(owner).__name__}) at {frame.f_code.co_filename}:{lineno}"
            where += f" `{code}`" if code else ""
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else ""
    return (
        f"[{QuantStep.PREPARE.value}] torch.export cannot trace {where or type(model).__name__}: "
        f"{type(exc).__name__}: {first_line} Data-dependent Python control flow (e.g. `if x.sum() > 0:`) "
        "cannot be captured: rewrite it with torch.where/torch.cond, or keep this model FP32 (no INT8 artifact)."
    )


def _bn_args_by_running_var(gm: GraphModule) -> dict[str, tuple[float, float]]:
    """(momentum, eps) of every BatchNorm call, keyed by its running_var buffer."""
    found = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is _BATCH_NORM and len(node.args) > 7:
            var = node.args[4]
            if isinstance(var, Node) and var.op == "get_attr":
                found[str(var.target)] = (float(node.args[6]), float(node.args[7]))
    return found


def _restore_bn_args(gm: GraphModule, bn_args: dict[str, tuple[float, float]]) -> None:
    """Put each BN's own eps/momentum back after torchao's QAT conv-BN rewrite.

    The rewrite's replacement pattern hard-codes eps=1e-5 and momentum=0.1, both in the batch_norm
    call and in the simulated fold ``sqrt(running_var + eps)``. torchvision MobileNetV3/EfficientNet
    and timm ``tf_*`` models use eps=1e-3: with small running variances the prepared model would
    start far from the trained FP32 one.
    """
    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is _BATCH_NORM and len(node.args) > 7:
            var = node.args[4]
            key = str(var.target) if isinstance(var, Node) and var.op == "get_attr" else None
            if key in bn_args and (node.args[6], node.args[7]) != bn_args[key]:
                node.args = (*node.args[:6], *bn_args[key], *node.args[8:])
                changed = True
        elif node.target is torch.ops.aten.add.Tensor and len(node.args) == 2:
            var, eps = node.args
            key = str(var.target) if isinstance(var, Node) and var.op == "get_attr" else None
            if key in bn_args and isinstance(eps, float) and eps != bn_args[key][1]:
                node.args = (var, bn_args[key][1])
                changed = True
    if changed:
        gm.recompile()


def _has_fake_quant(gm: GraphModule) -> bool:
    from torchao.quantization.pt2e import FakeQuantizeBase

    return any(isinstance(m, FakeQuantizeBase) for m in gm.modules())
