"""Knowledge distillation from the FP32 model: the QAT student learns the teacher's outputs, not only labels.

QAT starts from a trained FP32 model and should end where it started, minus what int8 cannot hold.
With labels alone, a few epochs at a small learning rate wander instead (on mnist5k QAT ended
0.1-0.6 pt below ORT's PTQ of the same FP32 model); the teacher's soft targets pull every logit back
towards the FP32 function, which is what post-training quantization preserves by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Distillation"]


@dataclass
class Distillation:
    """``loss = (1 - weight) * CE(labels) + weight * T^2 * KL(teacher_T || student_T)``.

    A dataclass, not an ``nn.Module``: the teacher is not a submodule of the student's
    LightningModule, so it stays out of its optimizer, ``state_dict`` and checkpoints.

    Args:
        teacher: the frozen FP32 model (a private copy: QAT must not move its weights).
        weight: share of the distillation term, in [0, 1].
        temperature: softens both distributions (``T^2`` keeps the gradient scale independent of T).
    """

    teacher: nn.Module
    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0 or self.temperature <= 0:
            raise ValueError(
                f"distillation needs 0 <= weight <= 1 and temperature > 0, got {self.weight}, {self.temperature}"
            )
        self.teacher.eval().requires_grad_(False)

    def loss(self, x: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(student_logits, labels)
        if self.weight == 0.0:
            return ce
        with torch.no_grad():
            teacher_logits = self.teacher.to(x.device)(x)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                      reduction="batchmean", log_target=True)
        return (1.0 - self.weight) * ce + self.weight * t * t * kl
