"""Deployment targets (``conf/deploy/<name>.yaml``): what a target follows, where it publishes, its gate.

A target is checked against :class:`DeployTarget` when it is loaded, so a typo in a budget fails at
``edgeqat deploy serve``, not at the first promotion. ``--target path/to/file.yaml`` loads a target
kept outside the package.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgeqat.errors import EdgeqatError

DEPLOY_CONF = Path(__file__).resolve().parent.parent / "conf" / "deploy"


class TargetError(EdgeqatError):
    """A deployment target that does not exist or does not validate; the message names the fix."""


@dataclass
class Follows:
    """Which registry pointer the target deploys: an alias, a legacy stage, or both (the alias wins)."""

    alias: Optional[str] = "production"
    stage: Optional[str] = None


@dataclass
class GateConfig:
    """What a version must show on the target's runtime and CPU before it ships."""

    runtime: str = "onnxruntime"  # a key of edgeqat.deploy.runtimes (the seam for OpenVINO, ExecuTorch)
    threads: int = 1
    batch: int = 1
    accuracy_floor: float = 0.0
    max_drop: Optional[float] = None
    p95_latency_ms: Optional[float] = None
    size_mb: Optional[float] = None
    eval_data: Optional[list[str]] = None  # data overrides; None: the run's own test split
    eval_limit: Optional[int] = 500
    latency_iters: int = 50
    isa: Optional[str] = None  # the CPU kind the target stands for; None: the controller's own


@dataclass
class DeployTarget:
    name: str = "local"
    follows: Follows = field(default_factory=Follows)
    model_name: Optional[str] = None  # None: any registered model the alias/stage is set on
    publish: str = "s3://edgeqat-artifacts/deployments/local/"
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if not self.follows.alias and not self.follows.stage:
            raise TargetError(f"deploy target {self.name!r} follows nothing: set follows.alias or follows.stage")
        g = self.gate
        from edgeqat.quant.isa import Isa

        if g.isa is not None and str(g.isa).lower() not in Isa.names():
            raise TargetError(f"deploy target {self.name!r}: gate.isa={g.isa!r}: choose one of "
                              f"{', '.join(Isa.names())} or null (the controller's CPU)")
        if g.threads < 1 or g.batch != 1 or g.latency_iters < 5:
            raise TargetError(f"deploy target {self.name!r}: gate.threads >= 1, gate.batch = 1 and "
                              "gate.latency_iters >= 5 (a p95 needs samples)")


def list_targets() -> list[str]:
    return sorted(p.stem for p in DEPLOY_CONF.glob("*.yaml"))


def load_target(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> DeployTarget:
    """``conf/deploy/<name>.yaml`` (or a YAML path) + dotlist overrides, typed and checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = DEPLOY_CONF / f"{name_or_path}.yaml"
    if not path.is_file():
        hint = difflib.get_close_matches(name_or_path, list_targets(), n=1)
        raise TargetError(f"Unknown deploy target {name_or_path!r}: choose one of {', '.join(list_targets())} "
                          f"or pass a YAML file" + (f". Did you mean {hint[0]!r}?" if hint else ""))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(DeployTarget(name=path.stem)), OmegaConf.load(path),
                              OmegaConf.from_dotlist(list(overrides)))
        target: Any = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = f"{e.full_key}: " if getattr(e, "full_key", None) else ""
        raise TargetError(f"deploy target {path}: {key}{str(e).splitlines()[0]}") from None
    return target
