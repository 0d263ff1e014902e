"""The one error the quant package raises for models it cannot turn into a real INT8 artifact."""

from __future__ import annotations

from edgeqat.errors import EdgeqatError


class QuantizationError(EdgeqatError, RuntimeError):
    """A model (or one of its ops/modules) cannot be quantized or exported as INT8.

    The message names the op or module and the fallback (for example: leave that module float via
    ``prepare_qat(..., float_modules=[...])``). Raised instead of ever producing a float model that
    is labelled INT8.
    """


def root_cause_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of the innermost cause, on one line.

    torch's exporters wrap the real reason (``NotImplementedError: The inequality ... cannot be
    solved``) in a banner whose first line says only "This is step 1/3"; a reason a user can act on
    is at the bottom of the ``__cause__`` chain.
    """
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit]
