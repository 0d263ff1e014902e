"""What a sweep will run, worked out and checked before its parent run exists.

Hydra's basic sweeper runs the grid of the swept values (``model=a,b quant=c,d`` is four jobs).
Every job's config is composed here first, so a typo in any of them is one line and exit 2, with
no parent run left behind; what remains to fail is the job itself, which its child run records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from edgeqat.config import ConfigError, compose_config


@dataclass(frozen=True)
class SweepPlan:
    """The user's overrides, the keys they sweep, each job's overrides, and the first job's config."""

    overrides: tuple[str, ...]
    keys: tuple[str, ...]
    jobs: tuple[tuple[str, ...], ...]
    config: DictConfig  # where the parent run goes and how it picks the best child (tracking.*, sweep.*)

    def label(self, job: Sequence[str]) -> str:
        """A job's swept values only (``model=resnet18 quant=qat_int8``): its run name and table row."""
        return " ".join(o for o in job if override_key(o) in self.keys) or "the only job"


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``hydra/launcher=joblib`` -> ``hydra/launcher``."""
    return override.split("=", 1)[0].lstrip("+~")


def plan_sweep(overrides: Sequence[str]) -> SweepPlan:
    """Expand the grid and compose each job's config; ConfigError names the first job that does not compose."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(override_key(o) == "hydra/sweeper" for o in overrides):
        raise ConfigError("edgeqat train -m runs Hydra's basic (grid) sweeper: drop the hydra/sweeper override "
                          "and list the values, e.g. model=resnet18,mobilenetv3_small_100")
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        grid = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException as e:
        raise ConfigError(f"cannot read the sweep ({' '.join(str(e).split())[:300]}): list values as "
                          "key=a,b,c or key=range(1,4)") from e
    keys = tuple(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))
    configs = []
    for job in grid:
        try:
            configs.append(compose_config(job))
        except ConfigError as e:
            raise ConfigError(f"sweep job '{' '.join(o for o in job if override_key(o) in keys)}': {e}") from e
    return SweepPlan(tuple(overrides), keys, tuple(tuple(job) for job in grid), configs[0])
