"""torchvision classifiers that timm does not have (ShuffleNetV2), behind the same factory signature.

Adding one is a decorator line: ``@register_torchvision("name")`` on a builder taking ``num_classes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_torchvision(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            log.warning("torchvision backbone %r registered twice; keeping the last one", name)
        _BUILDERS[name] = fn
        return fn

    return wrap


def is_torchvision_backbone(name: str) -> bool:
    return name in _BUILDERS


def list_torchvision_backbones() -> list[str]:
    return sorted(_BUILDERS)


def _tv_builder(fn_name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, **kwargs: object) -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, fn_name)(weights=None, num_classes=num_classes, **kwargs)

    return build


for _name in ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"):
    register_torchvision(_name)(_tv_builder(_name))


def create_torchvision_backbone(name: str, num_classes: int, in_chans: int, **kwargs: object) -> nn.Module:
    model = _BUILDERS[name](num_classes=num_classes, **kwargs)
    if in_chans != 3:
        _adapt_stem(model, in_chans)
    return model


def _adapt_stem(model: nn.Module, in_chans: int) -> None:
    """Swap the first 3-channel conv for one taking ``in_chans`` (torchvision hard-codes RGB stems)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(
                    in_chans,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                )
                with torch.no_grad():  # keep the init scale: average the RGB filters per input channel
                    new.weight.copy_(child.weight.mean(1, keepdim=True).expand_as(new.weight) * 3 / in_chans)
                setattr(parent, child_name, new)
                return
    raise ValueError(f"could not find a 3-channel stem conv to adapt to in_chans={in_chans}")
