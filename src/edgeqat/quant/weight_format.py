"""``quant.weight_range``: a weight format that ONNX Runtime computes exactly on the target CPU.

Where the target's dense u8*s8 kernels saturate (``isa.Isa.saturates_u8s8``: AVX2 / AVX-512BW
without VNNI), full-range int8 weights make ORT compute another model than the one QAT trained and
verification measured elsewhere. Two formats are exact there, and both are applied only to the
kernels that saturate (dense convs, QGemm/MatMul); depthwise convs keep the full int8 grid:

* ``int7``: weights on a 7-bit grid, |w_q| <= 64 (what ORT's ``reduce_range`` does). QAT trains under
  that constraint (the quantizer's weight fake-quant uses the same grid), so it learns the 7-bit
  weights instead of PTQ rounding into them. Same kernels, same speed, 1 bit less precision.
* ``u8``: the int8 grid unchanged, stored as uint8 with zero point 128 (``store_weights_as_u8``, an
  exact rewrite of the exported file). ORT then runs its U8U8 kernels, which widen to int16 first:
  exact and full precision, but ``vpmaddwd`` does half the multiplies per instruction.

``auto`` picks int7 on a saturating target (``AUTO_ON_SATURATING``: the faster of the two, measured
in ``benchmarks/weight_range.py``; the README has the figures) and int8 everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx
from onnx import numpy_helper

from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.isa import Isa, resolve_target_isa

__all__ = [
    "AUTO_ON_SATURATING", "WeightFormat", "WeightRange", "check_weight_grid", "conv_group", "dense_weight_extremes",
    "finish_int8_weights", "is_saturating_kernel", "resolve_weight_format", "store_weights_as_u8",
]

U8_ZERO_POINT = 128
_DENSE_OPS = {"Conv", "Gemm", "MatMul"}


class WeightRange(str, Enum):
    INT8 = "int8"  # [-127, 127]
    INT7 = "int7"  # [-64, 64] on the saturating kernels
    U8 = "u8"  # [-127, 127] stored as uint8 + 128 on the saturating kernels
    AUTO = "auto"


# Chosen from benchmarks/weight_range.py on an AMD EPYC (Zen 3, AVX2): see the README's table.
AUTO_ON_SATURATING = WeightRange.INT7


@dataclass(frozen=True)
class WeightFormat:
    """The resolved weight format for one target ISA (what every step of the export applies)."""

    range: WeightRange  # never AUTO
    target_isa: Isa

    @property
    def dense_qmax(self) -> int:
        """Largest |w_q| of dense conv/linear weights (depthwise convs always use 127)."""
        return 64 if self.range is WeightRange.INT7 else 127

    @property
    def u8_storage(self) -> bool:
        return self.range is WeightRange.U8

    @property
    def exact_on_target(self) -> bool:
        """False only for full-range s8 weights on a target whose dense kernels saturate."""
        return self.range is not WeightRange.INT8 or not self.target_isa.saturates_u8s8

    def to_dict(self) -> dict[str, str | bool]:
        return {"weight_range": self.range.value, "target_isa": self.target_isa.value,
                "exact_on_target": self.exact_on_target}


def resolve_weight_format(weight_range: str = "auto", target_isa: str | None = None) -> WeightFormat:
    """``quant.weight_range`` and ``quant.target_isa`` (None: this CPU) to a concrete format.

    Raises:
        QuantizationError: an unknown weight range or ISA (the message lists the choices).
    """
    try:
        chosen = WeightRange(str(weight_range).lower())
    except ValueError:
        raise QuantizationError(
            f"Unknown quant.weight_range {weight_range!r}: choose one of "
            f"{', '.join(r.value for r in WeightRange)}"
        ) from None
    isa = resolve_target_isa(target_isa)
    if chosen is WeightRange.AUTO:
        chosen = AUTO_ON_SATURATING if isa.saturates_u8s8 else WeightRange.INT8
    return WeightFormat(chosen, isa)


def is_saturating_kernel(op_type: str, weight_shape: tuple[int, ...], group: int = 1) -> bool:
    """Whether ORT runs this weighted node on a dense u8s8 kernel (the ones ``vpmaddubsw`` serves).

    ORT's depthwise path needs one input and one output channel per group (``qlinearconv.cc``).
    """
    if op_type not in _DENSE_OPS:
        return False
    if op_type == "Conv" and group > 1 and len(weight_shape) >= 2:
        return not (weight_shape[1] == 1 and weight_shape[0] == group)
    return True


def _weighted_dequantizes(model: onnx.ModelProto):
    """(consumer, DequantizeLinear, weight initializer, zero point initializer) of quantized weights."""
    inits = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type not in _DENSE_OPS or len(node.input) < 2:
            continue
        for name in node.input[:2]:
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
                continue
            weight, zero_point = inits.get(dq.input[0]), inits.get(dq.input[2])
            if weight is not None and zero_point is not None and len(weight.dims) >= 2:
                yield node, dq, weight, zero_point


def conv_group(node: onnx.NodeProto) -> int:
    """A Conv's ``group`` attribute (1 when absent)."""
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def dense_weight_extremes(model: onnx.ModelProto, *, int8_only: bool = False) -> dict[str, int]:
    """Largest |w_q - zero_point| per saturating-kernel node: what the target's exactness depends on.

    ``int8_only``: skip weights stored as uint8 (ORT runs those on its exact U8U8 kernels), leaving
    exactly the nodes a ``vpmaddubsw`` CPU can saturate on.
    """
    out = {}
    for node, dq, weight, zero_point in _weighted_dequantizes(model):
        if int8_only and weight.data_type != onnx.TensorProto.INT8:
            continue
        w = numpy_helper.to_array(weight).astype(np.int32)
        if not is_saturating_kernel(node.op_type, tuple(w.shape), conv_group(node)):
            continue
        zp = numpy_helper.to_array(zero_point).astype(np.int32)
        if zp.ndim:  # per channel along the DequantizeLinear's axis
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % w.ndim
            zp = zp.reshape([-1 if d == axis else 1 for d in range(w.ndim)])
        out[node.name or node.output[0]] = int(np.abs(w - zp).max())
    return out


def store_weights_as_u8(model: onnx.ModelProto) -> int:
    """Store the int8 weights of saturating-kernel nodes as uint8 + 128, zero point 128; in place.

    ``w_q - zero_point`` is unchanged, so the model computes the same integers; ORT then picks its
    U8U8 kernels. Depthwise convs keep their symmetric int8 weights (their kernel is exact already).
    Returns how many weights were rewritten.

    Raises:
        QuantizationError: a weight already has a non-zero zero point or reaches -128 (not our
            symmetric grid: there is no uint8 value for it).
    """
    rewritten = 0
    for node, dq, weight, zero_point in list(_weighted_dequantizes(model)):
        w = numpy_helper.to_array(weight)
        if weight.data_type != onnx.TensorProto.INT8 or not is_saturating_kernel(node.op_type, tuple(w.shape), conv_group(node)):
            continue
        zp = numpy_helper.to_array(zero_point)
        if np.any(zp) or w.min() == -128:
            raise QuantizationError(
                f"cannot store the weights of {node.name or node.op_type} as uint8: they are not symmetric int8 "
                "(zero point 0, no -128); use quant.weight_range=int7 instead"
            )
        names = (f"{weight.name}_u8", f"{zero_point.name}_u8_{rewritten}")  # zero points are shared tensors
        model.graph.initializer.extend([
            numpy_helper.from_array((w.astype(np.int16) + U8_ZERO_POINT).astype(np.uint8), names[0]),
            numpy_helper.from_array(np.full(zp.shape, U8_ZERO_POINT, np.uint8), names[1]),
        ])
        dq.input[0], dq.input[2] = names
        rewritten += 1
    if rewritten:
        from edgeqat.quant.onnx_passes import apply_onnx_passes

        apply_onnx_passes(model, ["prune_unused"])
    return rewritten


def check_weight_grid(model: onnx.ModelProto, weights: WeightFormat) -> None:
    """Refuse an INT8 file whose dense weights leave the format's grid (int7: |w_q| <= 64).

    Raises:
        QuantizationError: names the widest node; the model was quantized for another range.
    """
    extremes = dense_weight_extremes(model)
    too_wide = {name: v for name, v in extremes.items() if v > weights.dense_qmax}
    if too_wide:
        name, value = max(too_wide.items(), key=lambda item: item[1])
        raise QuantizationError(
            f"{len(too_wide)} dense weight(s) leave the {weights.range.value} grid (|w_q| <= {weights.dense_qmax}), "
            f"e.g. {name} reaches {value}: quantize with the same format (prepare_qat(..., "
            f"dense_weight_qmax={weights.dense_qmax}) or ptq_onnx(..., weights=...))"
        )


def finish_int8_weights(model: onnx.ModelProto, weights: WeightFormat | None, gemm_convs: bool) -> dict[str, int]:
    """The last step of every INT8 export (QAT and PTQ alike), in place: check, route, store.

    ``weights`` None skips the grid check and u8 storage and routes as for an AMX target.
    Returns the number of nodes each rewrite touched.
    """
    from edgeqat.quant.gemm_routing import route_deep_convs_to_gemm

    counts: dict[str, int] = {}
    if weights is not None:
        check_weight_grid(model, weights)
    if gemm_convs:
        bound = (weights.target_isa if weights is not None else Isa.AMX).exact_weight_bound
        counts["route_deep_convs_to_gemm"] = route_deep_convs_to_gemm(model, exact_bound=bound)
    if weights is not None and weights.u8_storage:
        counts["store_weights_as_u8"] = store_weights_as_u8(model)
    return counts
