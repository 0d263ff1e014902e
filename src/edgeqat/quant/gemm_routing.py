"""Send deep convolutions to ONNX Runtime's AMX int8 GEMM instead of its symmetric conv kernel.

ORT's QLinearConv picks its kernel from the weight zero point. All zeros (our symmetric weights)
selects MLAS's indirect "ConvSym" kernel, which uses AVX-512 VNNI at best. Anything else selects
im2col + the u8s8 GEMM, which MLAS runs on AMX tiles on a CPU that has them (Xeon 4th gen on).

With 1 thread on such a CPU the GEMM takes 0.53-0.86x the time once a dense conv's reduction depth
``in_channels * kh * kw`` reaches 256 and it has more than 64 output channels. Shallower convs are
up to 1.8x slower on it, convs with <= 64 outputs at large spatial sizes up to 1.2x, depthwise convs
1.6-2x (``benchmarks/ort_conv_kernels.py``).

The rewrite changes no number. For each such conv the stored int8 weights move by -1 and the zero
point becomes -1, so ``w_q - zero_point`` is the same integer and ORT computes the same outputs bit
for bit, as long as the stored weights stay within what the target's kernels compute exactly
(``exact_bound``: any int8 on VNNI/AMX/ARM; |w| <= 64 where AVX2's ``vpmaddubsw`` saturates, so
there a conv with a weight at -64 keeps its kernel, see ``isa``).

Targets without AMX keep the symmetric kernel: ``quant.ort_gemm_convs=null`` (auto) turns the rewrite
on only where the target ISA (``quant.target_isa``, default the exporting CPU's) is AMX; true or
false forces it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeqat.quant.isa import Isa, detect_cpu
from edgeqat.quant.onnx_passes import apply_onnx_passes
from edgeqat.quant.weight_format import conv_group

__all__ = [
    "DEFAULT_MIN_DEPTH", "MIN_OUT_CHANNELS", "resolve_ort_gemm_convs", "route_deep_convs_to_gemm",
    "weight_zero_point_is_zero",
]

# Where the AMX GEMM beat the symmetric kernel in benchmarks/ort_conv_kernels.py.
DEFAULT_MIN_DEPTH = 256  # in_channels * kh * kw
MIN_OUT_CHANNELS = 65  # i.e. more than 64


def resolve_ort_gemm_convs(setting: bool | None, target_isa: Isa | None = None) -> bool:
    """``quant.ort_gemm_convs``: True/False as given; None (the default) means where the target has AMX.

    ``target_isa`` None: the exporting CPU's own (``isa.detect_cpu``).
    """
    if setting is not None:
        return setting
    return (target_isa or detect_cpu().isa) is Isa.AMX


def weight_zero_point_is_zero(zero_point: np.ndarray | None) -> bool:
    """ORT's test for its symmetric conv kernel: no zero point, or every entry 0."""
    return zero_point is None or not np.any(zero_point)


def route_deep_convs_to_gemm(
    model: onnx.ModelProto, min_depth: int = DEFAULT_MIN_DEPTH, exact_bound: int = Isa.AMX.exact_weight_bound
) -> int:
    """Give each dense Conv with reduction depth >= ``min_depth`` a weight zero point of -1, in place.

    Only rewrites a Conv whose weight is ``DequantizeLinear(int8 initializer, scale, zero point 0)``,
    with ``group == 1``, at least ``MIN_OUT_CHANNELS`` outputs, and shifted weights within
    ``exact_bound`` (the target's ``Isa.exact_weight_bound``). Returns how many were rewritten.
    """
    if min_depth < 1:
        raise ValueError(f"min_depth must be >= 1, got {min_depth}")
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    routed = 0
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv_group(conv) != 1:
            continue
        dequantize = producers.get(conv.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3:
            continue
        weight, zero_point = (initializers.get(name) for name in (dequantize.input[0], dequantize.input[2]))
        if weight is None or zero_point is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        w = numpy_helper.to_array(weight)
        zp = numpy_helper.to_array(zero_point)
        deep = w.ndim >= 3 and int(np.prod(w.shape[1:])) >= min_depth and w.shape[0] >= MIN_OUT_CHANNELS
        # -128 is not our symmetric grid (no room to shift); past exact_bound the target's kernel saturates.
        if not deep or np.any(zp) or w.min() == -128 or max(-int(w.min()) + 1, int(w.max()) - 1) > exact_bound:
            continue
        # New initializers: the exporter shares one zero-point tensor between many weights.
        names = (f"{weight.name}_gemm_{routed}", f"{zero_point.name}_gemm_{routed}")
        graph.initializer.extend([
            numpy_helper.from_array((w.astype(np.int16) - 1).astype(np.int8), names[0]),
            numpy_helper.from_array(np.full_like(zp, -1), names[1]),
        ])
        dequantize.input[0], dequantize.input[2] = names
        routed += 1
    if routed:
        apply_onnx_passes(model, ["prune_unused"])  # the replaced weights and zero points
    return routed
