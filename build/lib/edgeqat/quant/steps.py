"""Names of the explicit quantization steps; each maps to one public function of ``edgeqat.quant``."""

from __future__ import annotations

import enum


class QuantStep(enum.Enum):
    """The QAT pipeline, in order. Used to label logs, artifacts and errors."""

    PREPARE = "prepare"  # prepare_qat: export + annotate + insert fake-quant
    TRAIN = "train"  # Lightning fit of the prepared graph (QATSchedule freezes observers / BN)
    CONVERT = "convert"  # convert: fold BN, quantize weights
    EXPORT = "export"  # export_onnx: QDQ ONNX with int8 weight initializers
    VERIFY = "verify"  # inspect_ort_graph + evaluate_onnx: integer kernels present, accuracy held
