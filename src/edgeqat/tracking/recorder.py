"""``RunRecorder``: every write to the run goes through one ordered queue that survives outages.

MLflow's own HTTP retries (a few, short: see :func:`configure_http_retries`) absorb blips. What
MLflow does not offer is holding data through a longer outage: its async logging drops a batch once
those retries are spent. Here a background thread sends operations strictly in order; a transient
failure keeps the operation at the head of the queue and retries with backoff, so training never
waits on the server and nothing is sent twice. Metrics and tags wait up to ``batch_window_s`` for
company, so a training loop costs the server one request per window, not one per logged step. What
is still queued when the job ends is written to a spool directory that ``edgeqat sync`` replays later.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeqat.tracking.spool import OPS_FILE, apply_op, is_transient, write_spool

if TYPE_CHECKING:
    from edgeqat.registry import LoggedModelSpec

log = logging.getLogger(__name__)

MAX_BATCH_METRICS = 1000  # MLflow's log_batch limits
MAX_BATCH_PARAMS_TAGS = 100
WINDOWED_OPS = ("metrics", "tags")  # frequent and small: worth holding back briefly to send together
DEFAULT_BATCH_WINDOW_S = 3.0


def configure_http_retries(max_retries: int = 3, backoff_factor: int = 1, timeout_s: int = 20) -> None:
    """Short MLflow HTTP retries (defaults block a call for minutes); the queue handles long outages."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(backoff_factor))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


class RunRecorder:
    """Ordered, non-blocking writer for one run.

    Args:
        client: an ``MlflowClient`` for the tracking server.
        run_id: the run every operation targets.
        staging_dir: where artifacts are copied at log time (the file may change or vanish later).
        spool_dir: where unsent operations go if the server is still away at :meth:`close`.
        max_backoff_s: longest pause between retries while the server is away.
        batch_window_s: how long a metrics/tags operation that found the queue empty waits for more
            before it is sent (``flush``/``close`` and any other kind of operation end the wait).
    """

    def __init__(self, client: Any | None, run_id: str, staging_dir: Path, spool_dir: Path,
                 max_backoff_s: float = 5.0, batch_window_s: float = DEFAULT_BATCH_WINDOW_S) -> None:
        self.client, self.run_id = client, run_id
        self.staging_dir, self.spool_dir = Path(staging_dir), Path(spool_dir)
        self.max_backoff_s, self.batch_window_s = max_backoff_s, batch_window_s
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._window_opened: float | None = None  # when an op arrived in an empty queue
        self._flushing = 0
        self._busy = False
        self._closed = False
        self.sent_ops = 0
        self.rejected: list[tuple[dict[str, Any], str]] = []
        self.outage_started: float | None = None
        self.logged_through: dict[str, int] = {}  # key -> the step it already has (a resumed run)
        self._thread = threading.Thread(target=self._worker, name="edgeqat-recorder", daemon=True)
        if client is not None:
            self._thread.start()

    @classmethod
    def disabled(cls, run_id: str, staging_dir: Path) -> RunRecorder:
        """A recorder that drops everything: for non-zero DDP ranks, which must not write to the run."""
        return cls(None, run_id, staging_dir, staging_dir)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    # -- enqueueing: cheap, never touches the network ------------------------------------------
    def _put(self, op: dict[str, Any]) -> None:
        if self.client is None:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("RunRecorder is closed")
            if not self._queue and not self._busy:
                self._window_opened = time.monotonic()
            self._queue.append(op)
            self._cond.notify()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, timestamp_ms: int | None = None) -> None:
        ts = timestamp_ms or int(time.time() * 1000)
        points = [[k, float(v), ts, int(step)] for k, v in metrics.items() if step > self.logged_through.get(k, -1)]
        if points:
            self._put({"op": "metrics", "metrics": points})

    def skip_logged(self, through: Mapping[str, int]) -> None:
        """A resumed run: drop points at or below the step each key already has on the server.

        The resumed job replays the epoch it was killed in; its steps the first attempt already
        sent stay as they are, so each step of each metric is logged once over both attempts.
        """
        self.logged_through = dict(through)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._put({"op": "params", "params": {k: str(v) for k, v in params.items()}})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._put({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None, copy: bool = True) -> None:
        """Queue a file upload; ``copy=False`` only for files nobody rewrites before the upload."""
        if self.client is None:
            return
        src = Path(local_path)
        if copy:
            dst = self.staging_dir / uuid.uuid4().hex / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            src = dst
        self._put({"op": "artifact", "path": str(src), "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put({"op": "text", "text": text, "artifact_file": artifact_file})

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        self._put({"op": "dict", "dict": json.loads(json.dumps(dictionary)), "artifact_file": artifact_file})

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        self._put({"op": "table", "data": {k: list(v) for k, v in data.items()}, "artifact_file": artifact_file})

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Queue a matplotlib figure; the sender thread renders it, so training does not wait on it.

        The caller hands the figure over: it must not draw on it afterwards.
        """
        if self.client is None:
            return
        path = self.staging_dir / uuid.uuid4().hex / Path(artifact_file).name
        parent = str(Path(artifact_file).parent)
        self._put({"op": "figure", "figure": figure, "path": str(path),
                   "artifact_path": None if parent == "." else parent})

    def log_input(self, name: str, digest: str, source: str, context: str = "training") -> None:
        self._put({"op": "input", "name": name, "digest": digest, "source": source, "context": context})

    def log_model(self, spec: LoggedModelSpec) -> None:
        """Queue a LoggedModel (and its registration): one op that resumes where a retry left it."""
        self._put(spec.to_op())

    def terminate(self, status: str) -> None:
        self._put({"op": "terminate", "status": status})

    # -- sending --------------------------------------------------------------------------------
    def _wait_for_company(self) -> None:
        """Hold a lone metrics/tags op back until the window closes, so it leaves with what follows.

        Called with the lock held; only the first op after an idle spell waits (``_window_opened``).
        """
        while (self._window_opened is not None and not self._closed and not self._flushing
               and all(op["op"] in WINDOWED_OPS for op in self._queue)):
            remaining = self._window_opened + self.batch_window_s - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        self._window_opened = None

    def _take_batch(self) -> list[dict[str, Any]]:
        """The head op, with the following ops that can share its request (MLflow's ``log_batch``)."""
        head = self._queue[0]
        if head["op"] == "params":
            batch, seen = [head], set(head["params"])
            for op in list(self._queue)[1:]:
                keys = set(op.get("params", ()))
                if op["op"] != "params" or len(seen | keys) > MAX_BATCH_PARAMS_TAGS or seen & keys:
                    break  # a repeated param goes alone, so the server sees (and refuses) the change
                batch.append(op)
                seen |= keys
            return batch
        if head["op"] not in WINDOWED_OPS:
            return [head]
        batch, n_metrics, tag_keys = [], 0, set[str]()
        for op in self._queue:  # metrics and tags are independent entities: one request carries both
            if op["op"] not in WINDOWED_OPS:
                break
            keys = tag_keys | set(op.get("tags", ()))
            n = n_metrics + len(op.get("metrics", ()))
            if batch and (len(keys) > MAX_BATCH_PARAMS_TAGS or n + len(keys) > MAX_BATCH_METRICS):
                break
            batch.append(op)
            n_metrics, tag_keys = n, keys
        return batch

    def _worker(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                self._wait_for_company()
                batch = self._take_batch()
                self._busy = True
            try:
                if batch[0]["op"] == "figure":
                    _render_figure(batch[0])
                apply_op(self.client, self.run_id, _merge(batch))
            except Exception as e:  # noqa: BLE001 - classified below
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                    if not is_transient(e):
                        log.warning("tracking server rejected %s: %s", batch[0]["op"], str(e)[:300])
                        self.rejected.append((batch[0], str(e)))
                        self._queue.popleft()
                        continue
                    if self.outage_started is None:
                        self.outage_started = time.monotonic()
                        log.warning("tracking server unreachable, queueing (%s)", str(e).splitlines()[0][:200])
                    if self._closed:
                        return  # close() spools what is left
                    self._cond.wait(backoff)  # close() wakes us for one last try
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            with self._cond:
                for _ in batch:
                    self._queue.popleft()
                self.sent_ops += len(batch)
                self._busy = False
                if self.outage_started is not None:
                    log.warning("tracking server back after %.0f s; sending the queue",
                                time.monotonic() - self.outage_started)
                    self.outage_started = None
                backoff = 0.5
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far is sent; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()  # ends a batch window now
            try:
                while self._queue or self._busy:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(timeout=min(remaining, 1.0) if remaining else 1.0)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout_s: float = 60.0) -> Path | None:
        """Send what is queued (waiting up to ``timeout_s``); spool the rest and return its path."""
        if self.client is None:
            return None
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()  # bounded: one in-flight call at most, capped by MLflow's HTTP timeout
        if not self._queue:
            return None
        ops = []
        for op in self._queue:  # a spool holds files and JSON: figures become their PNGs now
            try:
                ops.append(_render_figure(op) if op["op"] == "figure" else op)
            except Exception as e:  # noqa: BLE001 - one unrenderable figure must not cost the rest
                log.warning("could not render %s for the spool: %s", op["path"], e)
        self._queue.clear()
        path = write_spool(self.spool_dir / self.run_id, self.client.tracking_uri, self.run_id, ops)
        log.warning("tracking server or its artifact store still unreachable: %d operations spooled to %s; "
                    "upload them later with: edgeqat sync %s", len(ops), path, path)
        return path


def _render_figure(op: dict[str, Any]) -> dict[str, Any]:
    """Turn a queued figure into the artifact op for its PNG, in place (a retry uploads, not redraws)."""
    path = Path(op["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    op.pop("figure").savefig(path, dpi=110, bbox_inches="tight")
    op["op"] = "artifact"
    return op


def _merge(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """One op for a batch from ``_take_batch``; later tag/param values win, as they would one by one."""
    if len(batch) == 1:
        return batch[0]
    if batch[0]["op"] == "params":
        return {"op": "params", "params": {k: v for op in batch for k, v in op["params"].items()}}
    return {"op": "batch", "metrics": [m for op in batch for m in op.get("metrics", ())],
            "tags": {k: v for op in batch for k, v in op.get("tags", {}).items()}}


__all__ = ["OPS_FILE", "RunRecorder", "configure_http_retries"]
