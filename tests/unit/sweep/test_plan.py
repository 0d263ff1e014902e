"""The sweep's plan: Hydra's grid, each job's config checked before any run exists."""

from __future__ import annotations

import pytest

from edgeqat.config import ConfigError
from edgeqat.sweep.plan import override_key, plan_sweep


def test_the_grid_is_hydras_and_each_job_is_labelled_by_its_swept_values() -> None:
    plan = plan_sweep(["model=resnet18,mobilenetv3_small_100", "quant=ptq_int8,qat_int8", "data=digits",
                       "seed=range(1,3)"])
    assert plan.keys == ("model", "quant", "seed")
    assert len(plan.jobs) == 8
    assert all("data=digits" in job for job in plan.jobs)
    assert [plan.label(job) for job in plan.jobs[:2]] == ["model=resnet18 quant=ptq_int8 seed=1",
                                                          "model=resnet18 quant=ptq_int8 seed=2"]
    assert plan.config.data.source == "digits"


def test_a_single_job_is_a_sweep_of_one() -> None:
    plan = plan_sweep(["data=digits"])
    assert plan.keys == () and len(plan.jobs) == 1 and plan.label(plan.jobs[0]) == "the only job"


@pytest.mark.parametrize(("overrides", "named"), [
    (["model=resnet18,nope"], "sweep job 'model=nope': Unknown model config 'nope'"),
    (["seed=1,2", "trainer.max_epochs=1,-1"], "sweep job 'seed=1 trainer.max_epochs=-1': trainer.max_epochs=-1"),
    (["seed=interval(1,2)"], "list values as key=a,b,c"),
    (["hydra/sweeper=optuna", "seed=1,2"], "basic (grid) sweeper"),
    (["seed=1,2", "sweep.mode=median"], "sweep.mode=median: use one of max, min"),
])
def test_a_job_that_cannot_compose_is_named(overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        plan_sweep(overrides)
    assert named in str(info.value)


def test_override_keys() -> None:
    assert [override_key(o) for o in ["+a.b=1", "~c", "hydra/launcher=joblib", "model=x"]] == \
        ["a.b", "c", "hydra/launcher", "model"]
