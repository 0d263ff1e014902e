"""Run operations as JSON: applying one to a tracking server, spooling them, replaying a spool.

A spool directory holds ``meta.json`` (run id, tracking URI), ``ops.jsonl`` (one operation a line,
in the order they were logged), ``files/`` (the artifacts) and ``progress.json`` (how many lines
are already uploaded), so an interrupted ``edgeqat sync`` resumes without sending anything twice.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqat.errors import EdgeqatError

OPS_FILE = "ops.jsonl"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"

# Ops that reference local files, and under which keys: a spool copies those files in with the op.
FILE_KEYS = {"artifact": ("path",), "logged_model": ("path", "example")}

_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"}
_TRANSIENT_TEXT = ("Max retries exceeded", "Connection refused", "ConnectionError", "timed out",
                   "Failed to establish a new connection", "database is locked", "Connection aborted",
                   "RemoteDisconnected", "Could not connect", "EndpointConnectionError")


def is_transient(exc: BaseException) -> bool:
    """True when retrying later can succeed (server away, overloaded); False for a rejected request."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (ConnectionError, TimeoutError, requests.exceptions.ConnectionError,
                        requests.exceptions.Timeout)):
        return True
    text = str(exc)
    if isinstance(exc, MlflowException) and exc.error_code in _TRANSIENT_CODES:
        return True
    return any(t in text for t in _TRANSIENT_TEXT)


def apply_op(client: Any, run_id: str, op: dict[str, Any]) -> None:
    """Send one operation (see ``RunRecorder``) through an ``MlflowClient``."""
    from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
    from mlflow.entities import Dataset as DatasetEntity

    kind = op["op"]
    if kind in ("metrics", "params", "tags", "batch"):  # "batch": metrics and tags merged by the recorder
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in op.get("metrics", ())],
                         params=[Param(k, v) for k, v in op.get("params", {}).items()],
                         tags=[RunTag(k, v) for k, v in op.get("tags", {}).items()])
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"], op.get("artifact_path"))
    elif kind == "text":
        client.log_text(run_id, op["text"], op["artifact_file"])
    elif kind == "dict":
        client.log_dict(run_id, op["dict"], op["artifact_file"])
    elif kind == "table":
        client.log_table(run_id, op["data"], op["artifact_file"])
    elif kind == "input":
        dataset = DatasetEntity(name=op["name"], digest=op["digest"], source_type="uri",
                                source=json.dumps({"uri": op["source"]}))
        client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", op["context"])])])
    elif kind == "logged_model":
        from edgeqat.registry import apply_logged_model

        apply_logged_model(client, run_id, op)
    elif kind == "terminate":
        client.set_terminated(run_id, op["status"])
    else:
        raise ValueError(f"unknown run operation {kind!r}")


def write_spool(spool_dir: Path, tracking_uri: str, run_id: str, ops: list[dict[str, Any]]) -> Path:
    """Write ``ops`` (and the files they reference) under ``spool_dir``; appends to an existing spool."""
    files = spool_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    (spool_dir / META_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))
    with open(spool_dir / OPS_FILE, "a") as f:
        for i, op in enumerate(ops):
            op = dict(op)
            for key in FILE_KEYS.get(op["op"], ()):
                src = Path(op[key])
                dst = files / f"{i:06d}" / key / src.name  # one folder per file: the artifact keeps its name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                op[key] = str(dst.relative_to(spool_dir))
            f.write(json.dumps(op) + "\n")
    return spool_dir


@dataclass(frozen=True)
class SyncResult:
    run_id: str
    uploaded: int
    already_done: int


def sync_spool(spool_dir: Path, tracking_uri: str | None = None) -> SyncResult:
    """Replay a spool into its run, in order, resuming after the last uploaded operation."""
    from mlflow.tracking import MlflowClient

    spool_dir = Path(spool_dir)
    if not (spool_dir / OPS_FILE).exists() or not (spool_dir / META_FILE).exists():
        raise EdgeqatError(f"{spool_dir} is not an edgeqat spool (no {OPS_FILE}/{META_FILE}): pass the directory "
                           "printed by the training job")
    meta = json.loads((spool_dir / META_FILE).read_text())
    client = MlflowClient(tracking_uri or meta["tracking_uri"])
    progress_file = spool_dir / PROGRESS_FILE
    done = json.loads(progress_file.read_text())["done"] if progress_file.exists() else 0
    lines = (spool_dir / OPS_FILE).read_text().splitlines()
    try:
        client.get_run(meta["run_id"])
    except Exception as e:
        raise EdgeqatError(f"Cannot reach run {meta['run_id']} at {client.tracking_uri} ({str(e)[:200]}): "
                           "start the server or pass --tracking-uri") from e
    for i, line in enumerate(lines[done:], start=done):
        op = json.loads(line)
        for key in FILE_KEYS.get(op["op"], ()):
            op[key] = str(spool_dir / op[key])
        apply_op(client, meta["run_id"], op)
        progress_file.write_text(json.dumps({"done": i + 1}))
    return SyncResult(meta["run_id"], len(lines) - done, done)
