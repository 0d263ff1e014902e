"""Skip torchao's conv-BN pattern work for conv kinds a graph does not contain.

torchao's QAT conv-BN fuse (prepare) and fold (convert) trace their match/replacement patterns
with torch.export for each of conv1d, conv2d, conv_transpose1d and conv_transpose2d: ~3 s per kind
on 2 CPU cores at convert, even for a graph with only conv2d. This wraps the per-kind helper for
the duration of one call. It touches torchao internals, so it is isolated here and falls back to
the stock behaviour when those internals are missing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.fx import GraphModule

__all__ = ["only_present_conv_kinds"]

aten = torch.ops.aten
_KIND_TO_OP = {
    F.conv1d: aten.conv1d.default,
    F.conv2d: aten.conv2d.default,
    F.conv_transpose1d: aten.conv_transpose1d.default,
    F.conv_transpose2d: aten.conv_transpose2d.input,
}
_HELPERS = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")


@contextlib.contextmanager
def only_present_conv_kinds(gm: GraphModule) -> Iterator[None]:
    """Within the block, torchao's conv-BN fuse/fold skips conv kinds absent from ``gm``."""
    try:
        from torchao.quantization.pt2e import qat_utils
    except ImportError:  # pragma: no cover - torchao layout changed
        yield
        return
    present = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    originals = {name: getattr(qat_utils, name) for name in _HELPERS if hasattr(qat_utils, name)}

    def skipping(helper):  # noqa: ANN001, ANN202 - mirrors torchao's private signature
        def run(m: GraphModule, conv_fn, *args, **kwargs):  # noqa: ANN001, ANN202
            op = _KIND_TO_OP.get(conv_fn)
            if op is not None and op not in present:
                return m
            return helper(m, conv_fn, *args, **kwargs)

        return run

    for name, helper in originals.items():
        setattr(qat_utils, name, skipping(helper))
    try:
        yield
    finally:
        for name, helper in originals.items():
            setattr(qat_utils, name, helper)
