"""The one error the quant package raises for models it cannot turn into a real INT8 artifact."""

from __future__ import annotations

from edgeqat.errors import EdgeqatError


class QuantizationError(EdgeqatError, RuntimeError):
    """A model (or one of its ops/modules) cannot be quantized or exported as INT8.

    The message names the op or module and the fallback (for example: leave that module float via
    ``prepare_qat(..., float_modules=[...])``). Raised instead of ever producing a float model that
    is labelled INT8.
    """
