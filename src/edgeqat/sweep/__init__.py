"""Sweeps: a Hydra multirun as one parent MLflow run, one child run per job, whatever the launcher."""

from __future__ import annotations

from edgeqat._lazy import lazy_exports

_EXPORTS = {
    "SweepResult": "run",
    "run_sweep": "run",
    "plan_sweep": "plan",
    "sweep_job": "job",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
