"""MLflow wiring: one run per job, attached to ``mlflow run``'s run when there is one."""

from edgeqat.tracking.logger import MlflowRunLogger
from edgeqat.tracking.params import flatten_config
from edgeqat.tracking.recorder import RunRecorder
from edgeqat.tracking.run import (
    DEFAULT_TRACKING_URI,
    RunContext,
    TrackingError,
    fail_attached_run,
    failure_line,
    lightning_handles_sigterm,
    log_run_config,
    resolve_tracking_uri,
    tracked_run,
)
from edgeqat.tracking.spool import sync_spool

__all__ = [
    "DEFAULT_TRACKING_URI",
    "MlflowRunLogger",
    "RunContext",
    "RunRecorder",
    "TrackingError",
    "fail_attached_run",
    "failure_line",
    "lightning_handles_sigterm",
    "flatten_config",
    "log_run_config",
    "resolve_tracking_uri",
    "sync_spool",
    "tracked_run",
]
