"""``create_backbone``: one entry point for every architecture, unknown names refused with suggestions."""

from __future__ import annotations

import difflib
import fnmatch

from torch import nn

from edgeqat.errors import EdgeqatError

from edgeqat.models.torchvision_adapter import (
    create_torchvision_backbone,
    is_torchvision_backbone,
    list_torchvision_backbones,
)


class UnknownModelError(EdgeqatError, ValueError):
    """The model name is neither a timm model nor a registered torchvision adapter."""


def list_backbones(pattern: str = "*") -> list[str]:
    """All buildable backbone names matching a glob ``pattern`` (timm + torchvision adapters)."""
    import timm

    names = set(timm.list_models()) | set(list_torchvision_backbones())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def create_backbone(
    name: str, num_classes: int, in_chans: int, kwargs: dict | None = None
) -> nn.Module:
    """Build a randomly initialised classifier.

    Args:
        name: a timm model name (``timm.list_models()``) or a torchvision adapter (``shufflenet_v2_x0_5``).
        num_classes: size of the classifier head (from the dataset).
        in_chans: input channels (from the dataset: 1 for MNIST unless converted).
        kwargs: extra constructor arguments (``drop_rate``, ``zero_init_last``, ...).

    Raises:
        UnknownModelError: the name is unknown; the message lists close matches.
    """
    import timm

    kwargs = dict(kwargs or {})
    if is_torchvision_backbone(name):
        return create_torchvision_backbone(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if not timm.is_model(name):
        raise UnknownModelError(_unknown_message(name))
    # No hub downloads here: weights start random (or from a local checkpoint loaded later).
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if not kwargs.get("zero_init_last"):
        restore_zeroed_bn_gammas(model)
    return model


def restore_zeroed_bn_gammas(model: nn.Module) -> int:
    """Set BatchNorm scales that timm initialised to zero back to one; returns how many layers.

    Many timm families (ResNet, RegNet, ResNeXt, DLA, ...) zero-init the last BN gamma of each
    residual block so that a block starts as identity. QAT's simulated conv-BN fold divides by that
    gamma's running scale, and a zero gamma makes the folded weight's quantization grid degenerate.
    Doing this here, by what the model holds rather than by a per-family ``zero_init_last`` option,
    covers every model ``model.name`` can name and never passes a model an argument it lacks.
    Pass ``model.kwargs.zero_init_last=true`` to keep timm's init (FP32-only training).
    """
    import torch

    restored = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and not module.weight.any():
                module.weight.fill_(1.0)
                restored += 1
    return restored


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list_backbones(), n=3, cutoff=0.75)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown model {name!r}.{hint} See: edgeqat models list '{name[:4]}*'"
