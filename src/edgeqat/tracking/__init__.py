"""MLflow wiring: one run per job, attached to ``mlflow run``'s run when there is one.

Names are imported on first use (PEP 562): the secret scrubbing and the spool are needed by the
stack and the CLI, which must not pay for Lightning (``MlflowRunLogger``) to build a parser.
"""

from __future__ import annotations

from edgeqat._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_TRACKING_URI": "run",
    "MlflowRunLogger": "logger",
    "RunContext": "run",
    "RunRecorder": "recorder",
    "TrackingError": "run",
    "fail_attached_run": "run",
    "failure_line": "run",
    "flatten_config": "params",
    "lightning_handles_sigterm": "run",
    "log_run_config": "run",
    "resolve_tracking_uri": "run",
    "sync_spool": "spool",
    "tracked_run": "run",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
