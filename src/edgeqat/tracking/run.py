"""Run lifecycle: attach to (or create) one MLflow run, and always end it with a status.

Under ``mlflow run`` MLflow has already created the run and exported ``MLFLOW_RUN_ID``; every log
of this job goes into that run, so one job is exactly one run. All writes go through the run's
:class:`RunRecorder`, so they survive a tracking-server outage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqat.errors import EdgeqatError
from edgeqat.tracking.params import flatten_config
from edgeqat.tracking.recorder import DEFAULT_BATCH_WINDOW_S, RunRecorder, configure_http_retries
from edgeqat.tracking.secrets import scrub_secrets
from edgeqat.tracking.summary import NOTE_TAG, end_note

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "edgeqat"
FAILURE_TAG = "edgeqat.failure"
STATUS_TAG = "edgeqat.status"
RUN_ID_ENV = "EDGEQAT_RUN_ID"


class TrackingError(EdgeqatError, RuntimeError):
    """The tracking server cannot be used as configured; the message says how to fix it."""


class Preempted(SystemExit):
    """SIGTERM outside a Lightning loop (Lightning raises its own ``SIGTERMException`` inside one)."""


@dataclass
class RunContext:
    """What the job needs to write to its run."""

    run_id: str
    tracking_uri: str
    recorder: RunRecorder
    output_dir: Path
    spool_path: Path | None = None


def resolve_tracking_uri(configured: str | None = None) -> str:
    """``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in the working dir."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def failure_line(exc: BaseException) -> str:
    """One line naming the error, for the ``edgeqat.failure`` tag and the console."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def final_status(exc: BaseException | None) -> str:
    """MLflow run status for how the job ended: interrupted/preempted jobs are KILLED, errors FAILED."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"


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


def resolve_experiment(client: Any, configured: str | None) -> str:
    """The experiment id a new run goes to, by MLflow's own conventions.

    ``tracking.experiment_name`` when set, else ``$MLFLOW_EXPERIMENT_NAME``, else
    ``$MLFLOW_EXPERIMENT_ID`` (which must exist), else ``edgeqat``. Named experiments are created
    on first use.

    Raises:
        TrackingError: ``$MLFLOW_EXPERIMENT_ID`` names no experiment on this server.
    """
    name = configured or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        exp_id = os.environ["MLFLOW_EXPERIMENT_ID"]
        try:
            return client.get_experiment(exp_id).experiment_id
        except Exception as e:  # noqa: BLE001 - MLflow raises its own types for a missing id
            raise TrackingError(f"MLFLOW_EXPERIMENT_ID={exp_id} is not an experiment at {client.tracking_uri}: "
                                "unset it, or pass tracking.experiment_name=<name>") from e
    name = name or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


# MLflow's error codes for HTTP 401 and 403 (``mlflow.protos.databricks_pb2``), e.g. a basic-auth server.
_REFUSED = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def credentials_error(uri: str, exc: BaseException, action: str) -> TrackingError | None:
    """One line for a server that refuses the client's credentials (HTTP 401/403); None for any other error.

    ``action`` says what the user must be allowed to do ("create runs", "promote versions").
    """
    code = getattr(exc, "error_code", None)
    if code not in _REFUSED:
        return None
    return TrackingError(f"MLflow server {uri} refuses these credentials ({code}): set MLFLOW_TRACKING_USERNAME "
                         f"and MLFLOW_TRACKING_PASSWORD to a user allowed to {action} (edgeqat stack up --auth "
                         "says where the admin's password is)")


PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests the run under its parent


def _open_run(client: Any, experiment_name: str | None, run_name: str | None, tags: Mapping[str, str],
              parent_run_id: str | None = None, resume_run_id: str | None = None) -> str:
    if resume_run_id:  # `resume=<id>`: the same run, RUNNING again (a SIGKILLed one still says RUNNING)
        client.update_run(resume_run_id, status="RUNNING")
        return resume_run_id
    if parent_run_id:  # a sweep's job: a new run beside its parent, even under `mlflow run` (the parent's run)
        try:
            experiment_id = client.get_run(parent_run_id).info.experiment_id
        except Exception as e:  # noqa: BLE001 - MLflow raises its own types for a missing run
            if credentials_error(client.tracking_uri, e, "read runs") is not None:
                raise
            raise TrackingError(f"tracking.parent_run_id={parent_run_id} is not a run at {client.tracking_uri}: "
                                "leave it unset (a sweep sets it)") from e
        tags = {**tags, PARENT_TAG: parent_run_id}
        return client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        if tags:
            for k, v in tags.items():
                client.set_tag(run_id, k, v)
        return run_id
    exp_id = resolve_experiment(client, experiment_name)
    return client.create_run(exp_id, run_name=run_name, tags=dict(tags)).info.run_id


_LIGHTNING_OWNS_SIGTERM = threading.Event()


@contextmanager
def lightning_handles_sigterm() -> Iterator[None]:
    """Inside fit/test, Lightning stops at the next step boundary (``SIGTERMException``): don't raise mid-step."""
    _LIGHTNING_OWNS_SIGTERM.set()
    try:
        yield
    finally:
        _LIGHTNING_OWNS_SIGTERM.clear()


def _raise_preempted(signum: int, frame: Any) -> None:
    if not _LIGHTNING_OWNS_SIGTERM.is_set():
        raise Preempted(f"received signal {signum} (preemption)")


@contextmanager
def tracked_run(tracking_uri: str | None, experiment_name: str | None, output_dir: Path, run_name: str | None = None,
                tags: Mapping[str, str] | None = None, close_timeout_s: float = 60.0,
                batch_window_s: float = DEFAULT_BATCH_WINDOW_S, parent_run_id: str | None = None,
                resume_run_id: str | None = None) -> Iterator[RunContext]:
    """Yield the run; end it FINISHED, FAILED (with ``edgeqat.failure`` + traceback) or KILLED.

    With ``parent_run_id`` (a sweep's job) the run is a new child of that run, in its experiment;
    with ``resume_run_id`` it is that run again.

    Only global rank zero owns the run. Lightning's DDP launcher re-runs this job for the other
    ranks; they get the same run id (from ``EDGEQAT_RUN_ID``, so checkpoint paths agree) and a
    recorder that writes nothing: one job, one run, no point twice.
    """
    from lightning.pytorch.utilities import rank_zero_only
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    if getattr(rank_zero_only, "rank", 0) != 0:
        run_id = os.environ[RUN_ID_ENV]
        run_dir = Path(output_dir) / run_id
        yield RunContext(run_id, uri, RunRecorder.disabled(run_id, run_dir / "staged"), run_dir)
        return
    _check_reachable(uri)
    configure_http_retries()
    client = MlflowClient(uri)
    run_name = scrub_secrets(run_name) if run_name else run_name
    try:
        run_id = _open_run(client, experiment_name, run_name, scrub_secrets(dict(tags or {})), parent_run_id,
                           resume_run_id)
    except Exception as e:
        refused = credentials_error(uri, e, "create runs")
        if refused is not None:
            raise refused from None
        raise
    os.environ[RUN_ID_ENV] = run_id  # inherited by DDP worker processes
    run_dir = Path(output_dir) / run_id
    recorder = RunRecorder(client, run_id, staging_dir=run_dir / "staged", spool_dir=Path(output_dir) / "spool",
                           batch_window_s=batch_window_s)
    ctx = RunContext(run_id, uri, recorder, run_dir)
    recorder.set_tags({STATUS_TAG: "RUNNING"})
    previous = signal.signal(signal.SIGTERM, _raise_preempted)
    error: BaseException | None = None
    try:
        yield ctx
    except BaseException as exc:
        error = exc
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        status = final_status(error)
        closing = {STATUS_TAG: status}
        if error is not None:
            closing[FAILURE_TAG] = scrub_secrets(failure_line(error))
            closing[NOTE_TAG] = end_note(status, closing[FAILURE_TAG])
            recorder.log_text(scrub_secrets("".join(traceback.format_exception(error))), "failure/traceback.txt")
        recorder.set_tags(closing)
        recorder.terminate(status)
        ctx.spool_path = recorder.close(close_timeout_s)


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the code being run (the repo holding this package), or None outside git."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def log_run_config(ctx: RunContext, config: Mapping[str, Any], config_yaml: str, overrides: Sequence[str],
                   dataset: str) -> None:
    """Log the resolved config (YAML artifact + flat params), the overrides, the commit and the dataset."""
    if not ctx.recorder.enabled:
        return
    # Secrets (keys, passwords, signed URLs, values of secret env vars) never reach the run.
    config, config_yaml = scrub_secrets(dict(config)), scrub_secrets(config_yaml)
    overrides_text = scrub_secrets(" ".join(overrides))
    existing = ctx.recorder.client.get_run(ctx.run_id).data
    ctx.recorder.log_text(config_yaml, "config/config.yaml")
    params = flatten_config(config)
    params["overrides"] = overrides_text
    # `mlflow run` logged its entry-point parameter `overrides` already, and a resumed run all of them
    # (`resume` and `overrides` now differ, and MLflow refuses to change a param)
    ctx.recorder.log_params({k: v for k, v in params.items() if k not in existing.params})
    tags = {"edgeqat.dataset": dataset, "edgeqat.overrides": overrides_text[:5000]}
    commit = git_commit()
    if commit and "mlflow.source.git.commit" not in existing.tags:
        tags["mlflow.source.git.commit"] = commit
    ctx.recorder.set_tags(tags)


def fail_attached_run(exc: BaseException) -> None:
    """End ``mlflow run``'s pre-created run FAILED when the job dies before attaching to it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(resolve_tracking_uri())
        client.set_tag(run_id, FAILURE_TAG, scrub_secrets(failure_line(exc)))
        client.set_tag(run_id, STATUS_TAG, "FAILED")
        client.set_terminated(run_id, "FAILED")
    except Exception:  # the tracking server may be the very thing that failed; the exit code still tells
        pass
