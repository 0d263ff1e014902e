"""A Lightning logger that writes into an MLflow run it does not own.

Lightning's ``MLFlowLogger`` terminates the run in ``finalize`` (after ``fit``), although the job
still has to test, export and verify, and it blocks on the server; this one hands metrics to the
run's :class:`RunRecorder` and leaves the lifecycle to :func:`tracked_run`.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from edgeqat.tracking.recorder import RunRecorder


class MlflowRunLogger(Logger):
    """Queues Lightning's metrics for ``recorder``'s run (params are logged from the composed config)."""

    def __init__(self, recorder: RunRecorder, step_offset: int = 0) -> None:
        """``step_offset``: steps an earlier phase of the job already logged (QAT continues FP32's axis)."""
        super().__init__()
        self.recorder = recorder
        self.step_offset = step_offset
        self.logged_points = 0  # metric points handed to the recorder, for resilience checks

    @property
    @override
    def name(self) -> str:
        return "mlflow"

    @property
    @override
    def version(self) -> str:
        return self.recorder.run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> RunRecorder:
        return self.recorder

    @override
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Params come from the composed config (``log_run_config``), not from Lightning."""

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if metrics:
            self.recorder.log_metrics(metrics, step=self.step_offset + (step or 0))
            self.logged_points += len(metrics)
