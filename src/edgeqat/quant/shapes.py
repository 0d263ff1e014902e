"""Which input dims stay dynamic when a model is captured (PREPARE) or exported (EXPORT).

Batch, height and width are dynamic by default, so one file serves any batch and, for a fully
convolutional model, any image size. Some models' shape arithmetic defeats torch's symbolic solver
(``NotImplementedError: The inequality, Eq(-x/4 + ((x/2)//2), 0), cannot be solved``: DLA's and
DenseNet's pooled sizes, VoVNet's): for those the capture is retried with height and width fixed
at the example's, which is the size the pipeline trains, verifies and deploys at anyway. The batch
stays dynamic either way. A model that fails with fixed sizes too fails for another reason, and
that second error is the one reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.export import Dim

from edgeqat.quant.errors import root_cause_line

__all__ = ["capture_with_dynamic_shapes"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def capture_with_dynamic_shapes(capture: Callable[[dict[int, object]], T], example_input: torch.Tensor,
                                what: str, batch: object = Dim.AUTO) -> T:
    """``capture(dims)`` with batch and spatial dims dynamic; on failure, once more with spatial fixed.

    ``dims`` is the ``dynamic_shapes`` entry of the one input (dim index -> ``Dim``); ``batch`` is the
    batch dim's (``Dim("batch")`` to insist it stays dynamic). ``what`` names the model in the log
    line that says its file accepts one image size only.
    """
    spatial = range(2, example_input.dim())
    try:
        return capture({0: batch, **{d: Dim.AUTO for d in spatial}})
    except Exception as exc:
        if not spatial:
            raise
        first = exc
    result = capture({0: batch})
    size = "x".join(str(example_input.shape[d]) for d in spatial)
    log.warning("%s: torch could not keep the image size symbolic (%s); captured at %s only",
                what, root_cause_line(first, limit=200), size)
    return result
