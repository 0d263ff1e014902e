"""QAT to a verified INT8 ONNX model, as explicit steps (see ``QuantStep``).

PREPARE ``prepare_qat`` -> TRAIN (Lightning + ``QATSchedule``) -> CONVERT ``convert`` ->
EXPORT ``export_onnx`` -> VERIFY ``inspect_ort_graph`` / ``evaluate_onnx``; ``ptq_onnx`` is the ORT
post-training baseline.

``prepare_qat`` returns a ``QATModel`` (an ``nn.Module`` holding the fake-quant GraphModule as
``.graph_module``) rather than the bare graph: train/eval must follow Lightning's direct
``module.training`` assignments, which no patch on the graph itself can see (see ``qat_model``).
"""

from edgeqat.quant.convert import convert
from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.gemm_routing import resolve_ort_gemm_convs, route_deep_convs_to_gemm
from edgeqat.quant.isa import CpuInfo, Isa, detect_cpu, emulate_u8s8_conv
from edgeqat.quant.onnx_export import export_onnx
from edgeqat.quant.ptq import ptq_onnx
from edgeqat.quant.schedule import QATSchedule
from edgeqat.quant.qat_model import QATModel, freeze_bn_stats, freeze_observers
from edgeqat.quant.prepare import prepare_qat
from edgeqat.quant.quantizer import EdgeQuantizer
from edgeqat.quant.report import FloatNode, GraphReport, assert_integer_kernels, inspect_ort_graph
from edgeqat.quant.steps import QuantStep
from edgeqat.quant.verify import VerifyResult, evaluate_onnx, file_size_mb, measure_latency_ms, run_onnx
from edgeqat.quant.weight_format import WeightFormat, WeightRange, resolve_weight_format, store_weights_as_u8

__all__ = [
    "CpuInfo",
    "EdgeQuantizer",
    "FloatNode",
    "GraphReport",
    "Isa",
    "QATModel",
    "QATSchedule",
    "QuantStep",
    "QuantizationError",
    "VerifyResult",
    "WeightFormat",
    "WeightRange",
    "assert_integer_kernels",
    "convert",
    "detect_cpu",
    "emulate_u8s8_conv",
    "evaluate_onnx",
    "export_onnx",
    "file_size_mb",
    "freeze_bn_stats",
    "freeze_observers",
    "inspect_ort_graph",
    "measure_latency_ms",
    "prepare_qat",
    "ptq_onnx",
    "resolve_ort_gemm_convs",
    "resolve_weight_format",
    "route_deep_convs_to_gemm",
    "run_onnx",
    "store_weights_as_u8",
]
