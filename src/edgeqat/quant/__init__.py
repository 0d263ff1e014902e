"""QAT to a verified INT8 ONNX model, as explicit steps (see ``QuantStep``).

PREPARE ``prepare_qat`` -> TRAIN (Lightning + ``QATSchedule``) -> CONVERT ``convert`` ->
EXPORT ``export_onnx`` -> VERIFY ``inspect_ort_graph`` / ``evaluate_onnx``; ``ptq_onnx`` is the ORT
post-training baseline.
"""

from edgeqat.quant.convert import convert
from edgeqat.quant.errors import QuantizationError
from edgeqat.quant.qat_model import QATModel, freeze_bn_stats, freeze_observers
from edgeqat.quant.prepare import prepare_qat
from edgeqat.quant.quantizer import EdgeQuantizer
from edgeqat.quant.steps import QuantStep

__all__ = [
    "EdgeQuantizer",
    "QATModel",
    "QuantStep",
    "QuantizationError",
    "convert",
    "freeze_bn_stats",
    "freeze_observers",
    "prepare_qat",
]
