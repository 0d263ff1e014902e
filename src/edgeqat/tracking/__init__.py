"""MLflow wiring: one run per job, attached to ``mlflow run``'s run when there is one."""

from edgeqat.tracking.logger import MlflowRunLogger
from edgeqat.tracking.params import flatten_config
from edgeqat.tracking.run import (
    DEFAULT_TRACKING_URI,
    TrackingError,
    fail_attached_run,
    failure_line,
    log_run_config,
    resolve_tracking_uri,
    tracked_run,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "MlflowRunLogger",
    "TrackingError",
    "fail_attached_run",
    "failure_line",
    "flatten_config",
    "log_run_config",
    "resolve_tracking_uri",
    "tracked_run",
]
