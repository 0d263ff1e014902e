from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from edgeqat.config import compose_config, config_dir
from edgeqat.models import UnknownModelError, create_backbone, list_backbones

CONFIGURED = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


@pytest.mark.parametrize("option", CONFIGURED)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_configured_backbone_builds_and_runs(option: str, in_chans: int) -> None:
    cfg = compose_config([f"model={option}"])
    model = instantiate(cfg.model)(num_classes=7, in_chans=in_chans).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_any_timm_classifier_by_name() -> None:
    model = create_backbone("regnetx_002", num_classes=3, in_chans=1).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(UnknownModelError, match=r"Unknown model 'resnet181'. Did you mean .*'resnet18'"):
        create_backbone("resnet181", num_classes=10, in_chans=1)


def test_list_backbones_includes_torchvision_adapter_and_filters() -> None:
    names = list_backbones("shufflenet*")
    assert "shufflenet_v2_x0_5" in names
    assert all(n.startswith("shufflenet") for n in names)
    assert "resnet18" in list_backbones()


@pytest.mark.parametrize("name", ["mobilenetv2_050", "efficientnet_b0", "ghostnet_100", "efficientnet_lite0",
                                  "regnetx_002", "test_resnet"])
def test_any_timm_model_by_name_alone_gets_no_other_models_options(name: str) -> None:
    """``model.name=<x>`` on the default model group: nothing of resnet18's follows it (was a TypeError)."""
    cfg = compose_config([f"model.name={name}", "data=digits"])
    model = instantiate(cfg.model)(num_classes=10, in_chans=1)
    gammas = [m.weight for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert gammas and all(g.any() for g in gammas), "no BN starts with an all-zero scale (QAT folds divide by it)"


def test_zeroed_bn_gammas_are_restored_unless_asked_for() -> None:
    import timm

    from edgeqat.models.factory import restore_zeroed_bn_gammas

    assert restore_zeroed_bn_gammas(timm.create_model("test_resnet", num_classes=3)) > 0  # timm zero-inits them
    kept = create_backbone("test_resnet", num_classes=3, in_chans=1, kwargs={"zero_init_last": True})
    assert any(not m.weight.any() for m in kept.modules() if isinstance(m, torch.nn.BatchNorm2d))
