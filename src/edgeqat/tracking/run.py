"""Run lifecycle: attach to (or start) one MLflow run, log the config, and always end it.

Under ``mlflow run`` MLflow has already created the run and exported ``MLFLOW_RUN_ID``; every log
of this job goes into that run, so one job is exactly one run.
"""

from __future__ import annotations

import os
import subprocess
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeqat.errors import EdgeqatError
from edgeqat.tracking.params import flatten_config

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
FAILURE_TAG = "edgeqat.failure"


class TrackingError(EdgeqatError, RuntimeError):
    """The tracking server cannot be used as configured; the message says how to fix it."""


def resolve_tracking_uri(configured: str | None = None) -> str:
    """``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in the working dir."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def failure_line(exc: BaseException) -> str:
    """One line naming the error, for the ``edgeqat.failure`` tag and the console."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return  # reachable; credentials are checked by the first real call
        raise TrackingError(f"MLflow server at {uri} answered {e.code} on /health: check the URI") from e
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}): start it "
            "(edgeqat stack up) or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from e


@contextmanager
def tracked_run(tracking_uri: str | None, experiment_name: str, run_name: str | None = None,
                tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Yield the active run; end it FINISHED, FAILED (with ``edgeqat.failure``) or KILLED on Ctrl-C."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    _check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        mlflow.set_experiment(experiment_name)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=dict(tags or {}))
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.set_tag(FAILURE_TAG, "KeyboardInterrupt: stopped by the user")
        mlflow.end_run("KILLED")
        raise
    except BaseException as exc:
        mlflow.set_tag(FAILURE_TAG, failure_line(exc))
        mlflow.log_text("".join(traceback.format_exception(exc)), "failure/traceback.txt")
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the code being run (the repo holding this package), or None outside git."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def log_run_config(config: Mapping[str, Any], config_yaml: str, overrides: Sequence[str], dataset: str) -> None:
    """Log the resolved config (YAML artifact + flat params), the overrides, the commit and the dataset."""
    import mlflow

    run = mlflow.active_run()
    assert run is not None, "log_run_config needs an active run"
    existing = mlflow.get_run(run.info.run_id).data
    mlflow.log_text(config_yaml, "config/config.yaml")
    params = flatten_config(config)
    if "overrides" not in existing.params:  # `mlflow run` already logged its entry-point parameter
        params["overrides"] = " ".join(overrides)
    mlflow.log_params(params)
    tags = {"edgeqat.dataset": dataset, "edgeqat.overrides": " ".join(overrides)[:5000]}
    commit = git_commit()
    if commit and "mlflow.source.git.commit" not in existing.tags:
        tags["mlflow.source.git.commit"] = commit
    mlflow.set_tags(tags)


def fail_attached_run(exc: BaseException) -> None:
    """End ``mlflow run``'s pre-created run FAILED when the job dies before attaching to it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(resolve_tracking_uri())
        client.set_tag(run_id, FAILURE_TAG, failure_line(exc))
        client.set_terminated(run_id, "FAILED")
    except Exception:  # the tracking server may be the very thing that failed; the exit code still tells
        pass
