"""The graph rewrites are exact: same outputs, different op spelling."""

from __future__ import annotations

import torch
from torch import nn

from edgeqat.quant.fx_passes import apply_passes, list_passes
from tests.unit.quant.tiny import TinyMobile, TinyShuffle, synthetic_batch

aten = torch.ops.aten


def _exported(model: nn.Module) -> torch.fx.GraphModule:
    from torch.export import Dim

    x = synthetic_batch(2, seed=0)[0]
    return torch.export.export(model.eval(), (x,), dynamic_shapes=({0: Dim.AUTO},)).module()


def _targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_passes_are_exact_and_rewrite_the_ops() -> None:
    torch.manual_seed(0)
    for model, gone, new in (
        (
            TinyMobile(),
            {aten.mean.dim, aten.silu.default, aten.hardswish.default, aten.hardsigmoid.default},
            {aten.adaptive_avg_pool2d.default, aten.sigmoid.default, aten.hardtanh.default},
        ),
        (TinyShuffle(), {aten.transpose.int}, {aten.index_select.default}),
    ):
        gm = _exported(model)
        x = synthetic_batch(3, seed=1)[0]
        before = gm(x)
        counts = apply_passes(gm)
        assert sum(counts.values()) > 0
        assert not gone & set(_targets(gm)) and new <= set(_targets(gm))
        torch.testing.assert_close(gm(x), before, rtol=1e-5, atol=1e-5)


def test_unknown_pass_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="valid"):
        apply_passes(_exported(TinyShuffle()), ["no_such_pass"])
    assert "decompose_silu" in list_passes()


class _IdentityArithmetic(nn.Module):
    """A branch sum started at zero (MobileOne's train-time block) and friends."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        total = 0 + y  # the summed branches, none of them identity
        return (total * 1) / 1 - 0


class _SharedInPlace(nn.Module):
    """``t = y + 0; t += 1`` while ``y`` is read again: dropping the add would change ``y``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        t = y + 0
        t += 1
        return t * y


def test_identity_arithmetic_is_dropped_but_not_under_a_shared_in_place_write() -> None:
    torch.manual_seed(0)
    x = synthetic_batch(3, seed=1)[0]
    arithmetic = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor}

    gm = _exported(_IdentityArithmetic())
    before = gm(x)
    assert apply_passes(gm, ["drop_identity_arithmetic"])["drop_identity_arithmetic"] == 4
    assert not arithmetic & set(_targets(gm))
    torch.testing.assert_close(gm(x), before)

    gm = _exported(_SharedInPlace())
    before = gm(x)
    apply_passes(gm, ["drop_identity_arithmetic"])
    torch.testing.assert_close(gm(x), before)
