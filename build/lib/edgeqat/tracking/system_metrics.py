"""MLflow's system metrics (CPU, memory, disk, network) for a run, switched on by config."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from edgeqat.tracking.run import RunContext


@contextmanager
def system_metrics(run: RunContext, enabled: bool, sampling_interval_s: float = 10.0) -> Iterator[None]:
    """Sample system metrics into ``run`` while the block runs (``tracking.system_metrics=true``)."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run.run_id, sampling_interval=sampling_interval_s, samples_before_logging=1,
                                   tracking_uri=run.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
