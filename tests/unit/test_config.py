"""Every config group composes, is typed, and instantiates; bad overrides fail at compose, in one line."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.utils import instantiate

from edgeqat.config import ConfigError, compose_config, config_dir

GROUPS = ("model", "data", "optim", "quant", "trainer", "tracking", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_has_options(group: str) -> None:
    assert options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group: str, option: str) -> None:
    extra = ["data.root=/tmp"] if (group, option) == ("data", "imagefolder") else []
    cfg = compose_config([f"{group}={option}", *extra])
    if group not in ("experiment",):
        assert group in cfg
    if group == "model":
        assert cfg.model.name == option


@pytest.mark.parametrize("option", options("optim"))
def test_optim_instantiates_against_parameters(option: str) -> None:
    cfg = compose_config([f"optim={option}"])
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(cfg.optim.optimizer)(params=params)
    sched = instantiate(cfg.optim.scheduler)(optimizer=opt)
    opt.step()
    sched.step()
    assert isinstance(opt, torch.optim.Optimizer)


def test_trainer_instantiates(tmp_path) -> None:
    cfg = compose_config(["trainer.max_epochs=2"])
    trainer = instantiate(cfg.trainer, default_root_dir=str(tmp_path), logger=False)
    assert trainer.max_epochs == 2


@pytest.mark.parametrize(("override", "fragment"), [
    ("model=nope", "Unknown model config 'nope'. Choose one of:"),
    ("trainer.max_epochs=abc", "Bad value for trainer.max_epochs"),
    ("trainer.max_epoch=3", "trainer.max_epoch"),
    ("data.batch_size=1.5x", "Bad value for data.batch_size"),
    ("quant=int4", "Unknown quant config 'int4'"),
    ("model", "Error parsing override"),
])
def test_bad_override_is_one_line_error(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_config([override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_model_name_override_reaches_any_timm_model() -> None:
    assert compose_config(["model.name=regnetx_002"]).model.name == "regnetx_002"


def test_experiment_preset_overrides_groups() -> None:
    cfg = compose_config(["experiment=smoke"])
    assert (cfg.data.source, cfg.model.name, cfg.trainer.max_epochs) == ("digits", "mobilenetv3_small_100", 1)


@pytest.mark.parametrize("override, named", [
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1 is out of range"),  # was an OverflowError in Lightning
    ("data.image_size=0", "data.image_size=0 is out of range"),  # was a Hydra traceback, exit 1
    ("data.max_train_samples=0", "data.max_train_samples=0 is out of range"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("quant.qat_epochs=-2", "quant.qat_epochs=-2"),
    ("quant.latency_iters=0", "quant.latency_iters=0"),
    ("quant.distill_weight=1.5", "a share of the loss"),
    ("quant.benchmark_resolutions=[224,4]", "has 4"),
    ("tracking.close_timeout_s=-1", "tracking.close_timeout_s=-1"),
])
def test_numbers_out_of_range_are_refused_at_compose_time(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        compose_config([override])


@pytest.mark.parametrize("model, optimizer, epochs", [
    ("resnet18", "torch.optim.AdamW", 4),
    ("mobilenetv3_small_100", "torch.optim.SGD", 20),
    ("efficientnet_lite0", "torch.optim.SGD", 20),
    ("shufflenet_v2_x0_5", "torch.optim.SGD", 20),
])
def test_model_config_carries_its_family_recipe(model: str, optimizer: str, epochs: int) -> None:
    cfg = compose_config([f"model={model}"])
    assert (cfg.optim.optimizer._target_, cfg.trainer.max_epochs, cfg.optim.scheduler.T_max) == (optimizer, epochs, epochs)


def test_overrides_still_beat_the_model_recipe() -> None:
    cfg = compose_config(["model=efficientnet_lite0", "optim=adamw", "trainer.max_epochs=3"])
    assert (cfg.optim.optimizer._target_, cfg.trainer.max_epochs) == ("torch.optim.AdamW", 3)
    # model.name alone names a network, not a recipe: another family's options never follow it
    assert compose_config(["model.name=efficientnet_lite0"]).optim.optimizer._target_ == "torch.optim.AdamW"
    assert compose_config(["experiment=smoke"]).trainer.max_epochs == 1, "a preset still wins over its model"
