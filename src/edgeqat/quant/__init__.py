"""QAT to a verified INT8 ONNX model, as explicit steps (see ``QuantStep``).

PREPARE ``prepare_qat`` -> TRAIN (Lightning + ``QATSchedule``) -> CONVERT ``convert`` ->
EXPORT ``export_onnx`` -> VERIFY ``inspect_ort_graph`` / ``evaluate_onnx`` against
``integer_reference_logits`` (what the file's integer operators compute exactly); ``ptq_onnx`` is the ORT
post-training baseline.

``prepare_qat`` returns a ``QATModel`` (an ``nn.Module`` holding the fake-quant GraphModule as
``.graph_module``) rather than the bare graph: train/eval must follow Lightning's direct
``module.training`` assignments, which no patch on the graph itself can see (see ``qat_model``).


Names are imported on first use (PEP 562): ``edgeqat.quant.isa`` and ``weight_format`` need only numpy
and onnx, so resolving ``quant.weight_range`` before a run imports no torch or torchao (whose import
prints warnings that would break "bad input is one line on stderr").
"""

from __future__ import annotations

from edgeqat._lazy import lazy_exports

_EXPORTS = {
    "CpuInfo": "isa",
    "DriftReport": "drift",
    "DriftSource": "drift",
    "EdgeQuantizer": "quantizer",
    "FloatNode": "report",
    "IntegerReference": "integer_reference",
    "LogitDrift": "verify",
    "GraphReport": "report",
    "Isa": "isa",
    "QATModel": "qat_model",
    "QATSchedule": "schedule",
    "QuantStep": "steps",
    "QuantizationError": "errors",
    "VerifyResult": "verify",
    "WeightFormat": "weight_format",
    "WeightRange": "weight_format",
    "assert_integer_kernels": "report",
    "compare_logits": "verify",
    "convert": "convert",
    "detect_cpu": "isa",
    "emulate_u8s8_conv": "isa",
    "evaluate_onnx": "verify",
    "export_onnx": "onnx_export",
    "file_size_mb": "verify",
    "freeze_bn_stats": "qat_model",
    "freeze_observers": "qat_model",
    "inspect_ort_graph": "report",
    "integer_reference_logits": "integer_reference",
    "localize_drift": "drift",
    "measure_latency_ms": "verify",
    "prepare_qat": "prepare",
    "ptq_onnx": "ptq",
    "resolve_ort_gemm_convs": "gemm_routing",
    "resolve_weight_format": "weight_format",
    "route_deep_convs_to_gemm": "gemm_routing",
    "run_onnx": "verify",
    "store_weights_as_u8": "weight_format",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
