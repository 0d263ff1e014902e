"""QATSchedule: argument checks and which epoch freezes what."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edgeqat.quant import QATSchedule, prepare_qat
from tests.unit.quant.tiny import conv_bn, synthetic_batch


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_rejects_bad_epochs(bad: object) -> None:
    with pytest.raises(ValueError, match="freeze_bn_epoch"):
        QATSchedule(freeze_bn_epoch=bad)  # type: ignore[arg-type]


def test_freezes_at_the_given_epochs() -> None:
    model = prepare_qat(nn.Sequential(conv_bn(3, 4, 3, act=nn.ReLU)), synthetic_batch(2, seed=0, res=8)[0])
    holder = nn.Module()
    holder.backbone = model
    schedule = QATSchedule(freeze_observer_epoch=2, freeze_bn_epoch=1)
    seen = []
    for epoch in range(4):
        schedule.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), holder)  # type: ignore[arg-type]
        seen.append((model.observers_frozen, model.bn_frozen))
    assert seen == [(False, False), (False, True), (True, True), (True, True)]


def test_needs_a_qat_model() -> None:
    with pytest.raises(RuntimeError, match="no QATModel"):
        QATSchedule(freeze_bn_epoch=0).on_train_epoch_start(SimpleNamespace(current_epoch=0), nn.Linear(1, 1))  # type: ignore[arg-type]
    assert QATSchedule().freeze_bn_epoch is None and torch.is_tensor(torch.zeros(1))
