"""Tiny models and a learnable synthetic task for the quant tests (CPU, 32x32, seconds)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeqat.quant import (
    QATModel,
    WeightFormat,
    convert,
    export_onnx,
    freeze_bn_stats,
    freeze_observers,
    prepare_qat,
    resolve_weight_format,
)

NUM_CLASSES = 4
RES = 32


def synthetic_batch(n: int, seed: int, res: int = RES) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = orientation/frequency of a sinusoid plus a colour bias, with noise: learnable in ~50 steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    coords = torch.linspace(0, 1, res)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for c in labels.tolist():
        angle = c * math.pi / NUM_CLASSES
        wave = torch.sin(2 * math.pi * (2 + c) * (xx * math.cos(angle) + yy * math.sin(angle)))
        colour = torch.tensor([c - 1.5, 1.5 - c, 0.5 * (c % 2)]).view(3, 1, 1) * 0.4
        images.append(wave.expand(3, res, res) + colour)
    return torch.stack(images) + 0.3 * torch.randn(n, 3, res, res, generator=g), labels


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(channels // 2, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class TinyMobile(nn.Module):
    """MobileNetV3/EfficientNet in miniature: depthwise conv, ReLU6, hardswish, SiLU, SE, residual."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.Hardswish)
        self.dw = conv_bn(16, 16, 3, 1, groups=16, act=nn.ReLU6)
        self.se = SqueezeExcite(16)
        self.pw = conv_bn(16, 16)
        self.expand = conv_bn(16, 32, 1, act=nn.SiLU)
        self.dw2 = conv_bn(32, 32, 3, 2, groups=32, act=nn.ReLU6)
        self.se2 = SqueezeExcite(32, gate=nn.Sigmoid)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.se(self.dw(x)))
        x = self.se2(self.dw2(self.expand(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TinyShuffle(nn.Module):
    """ShuffleNetV2 in miniature, from torchvision's own blocks (chunk, cat, channel shuffle)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        from torchvision.models.shufflenetv2 import InvertedResidual

        self.stem = conv_bn(3, 24, 3, 2, act=nn.ReLU)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.blocks = nn.Sequential(InvertedResidual(24, 48, 2), InvertedResidual(48, 48, 1))
        self.head = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.pool(self.stem(x)))
        return self.head(x.mean((2, 3)))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "tiny_mobile":
        return TinyMobile()
    if name == "tiny_shuffle":
        return TinyShuffle()
    if name == "test_resnet":
        import timm

        return timm.create_model("test_resnet", num_classes=NUM_CLASSES, zero_init_last=False)
    raise ValueError(name)


def train(model: nn.Module, steps: int, lr: float, seed: int = 0) -> float:
    """Adam on the synthetic task; returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        x, y = synthetic_batch(32, seed=seed * 1000 + step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


@dataclass
class Artifacts:
    fp32: nn.Module
    prepared: QATModel
    converted: torch.fx.GraphModule
    fp32_onnx: Path
    int8_onnx: Path
    images: np.ndarray
    labels: np.ndarray
    weights: WeightFormat


def make_artifacts(name: str, out_dir: Path, weight_range: str = "auto") -> Artifacts:
    """FP32 training -> prepare -> short QAT with both freezes -> convert -> export both.

    ``weight_range`` as ``quant.weight_range``, for this CPU: ``auto`` gives the weights this CPU's
    int8 kernels compute exactly (int7 on AVX2 without VNNI), which is what the pipeline exports.
    """
    weights = resolve_weight_format(weight_range)
    fp32 = build(name)
    train(fp32, steps=40, lr=1e-2)
    prepared = prepare_qat(fp32, synthetic_batch(4, seed=99)[0], dense_weight_qmax=weights.dense_qmax)
    train(prepared, steps=8, lr=1e-3, seed=1)
    freeze_observers(prepared)
    freeze_bn_stats(prepared)
    train(prepared, steps=4, lr=1e-3, seed=2)
    converted = convert(prepared)
    example = synthetic_batch(1, seed=98)[0]
    images, labels = synthetic_batch(256, seed=7)
    return Artifacts(
        fp32=fp32,
        prepared=prepared,
        converted=converted,
        fp32_onnx=export_onnx(fp32, example, out_dir / f"{name}_{weight_range}_fp32.onnx"),
        int8_onnx=export_onnx(converted, example, out_dir / f"{name}_{weight_range}_int8.onnx", weights=weights),
        images=images.numpy(),
        labels=labels.numpy(),
        weights=weights,
    )
