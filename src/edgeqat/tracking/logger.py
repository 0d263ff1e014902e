"""A Lightning logger that writes into an MLflow run it does not own.

Lightning's ``MLFlowLogger`` terminates the run in ``finalize`` (after ``fit``), although the job
still has to test, export and verify; here the run's lifecycle belongs to :func:`tracked_run`.
"""

from __future__ import annotations

import time
from argparse import Namespace
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override


class MlflowRunLogger(Logger):
    """Logs metrics to ``run_id`` through ``MlflowClient.log_batch`` (params are logged by the job)."""

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        super().__init__()
        self._run_id = run_id
        self._tracking_uri = tracking_uri
        self._client: Any = None

    @property
    @override
    def name(self) -> str:
        return "mlflow"

    @property
    @override
    def version(self) -> str:
        return self._run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self._tracking_uri)
        return self._client

    @override
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Params come from the composed config (``log_run_config``), not from Lightning."""

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key=k, value=float(v), timestamp=now, step=step or 0) for k, v in metrics.items()
                 if k != "epoch"]
        if batch:
            self.experiment.log_batch(self._run_id, metrics=batch)
