"""Distillation: the QAT loss also matches the FP32 teacher, which stays out of the student's state."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeqat.lightning_modules import ClassifierModule, Distillation


def _pair() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    teacher, student = nn.Linear(8, 4), nn.Linear(8, 4)
    return teacher, student, torch.randn(32, 8), torch.randint(0, 4, (32,))


def test_weight_zero_is_plain_cross_entropy() -> None:
    teacher, student, x, y = _pair()
    logits = student(x)
    assert torch.equal(Distillation(teacher, weight=0.0).loss(x, logits, y), F.cross_entropy(logits, y))


def test_student_equal_to_teacher_has_zero_distillation_term() -> None:
    teacher, _, x, y = _pair()
    with torch.no_grad():
        logits = teacher(x)
    assert Distillation(teacher, weight=1.0).loss(x, logits, y).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_steps_move_the_student_towards_the_teacher() -> None:
    teacher, student, x, y = _pair()
    distill = Distillation(teacher, weight=1.0, temperature=2.0)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    gap = lambda: (student(x).softmax(1) - teacher(x).softmax(1)).abs().mean().item()  # noqa: E731
    before = gap()
    for _ in range(50):
        opt.zero_grad()
        distill.loss(x, student(x), y).backward()
        opt.step()
    assert gap() < 0.5 * before
    assert all(p.grad is None for p in teacher.parameters())  # frozen


def test_teacher_stays_out_of_the_students_parameters_and_checkpoint() -> None:
    teacher, student, x, y = _pair()
    module = ClassifierModule(student, functools.partial(torch.optim.SGD, lr=0.1), num_classes=4,
                              distillation=Distillation(teacher))
    assert len(list(module.parameters())) == len(list(student.parameters()))
    assert all(key.startswith(("backbone.", "metrics.")) for key in module.state_dict())
    assert module.training_step((x, y), 0).item() != pytest.approx(F.cross_entropy(student(x), y).item())


@pytest.mark.parametrize("weight, temperature", [(-0.1, 2.0), (1.5, 2.0), (0.5, 0.0)])
def test_bad_settings_are_refused(weight: float, temperature: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        Distillation(nn.Linear(2, 2), weight=weight, temperature=temperature)
