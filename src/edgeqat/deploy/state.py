"""The controller's durable state (SQLite): deliveries seen, verdicts given, what each target runs.

A restart resumes from here; the same delivery twice is recognised by its id; a version already
judged for a target is not gated again (a rollback republishes it at once).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY, received_at REAL, entity TEXT, action TEXT, model TEXT, version TEXT);
CREATE TABLE IF NOT EXISTS verdicts (
    target TEXT, model TEXT, version TEXT, sha256 TEXT, status TEXT, reason TEXT, report TEXT, decided_at REAL,
    PRIMARY KEY (target, model, version, sha256));
CREATE TABLE IF NOT EXISTS current (
    target TEXT PRIMARY KEY, model TEXT, version TEXT, sha256 TEXT, published_at TEXT);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT, model TEXT, version TEXT, sha256 TEXT, kind TEXT, at REAL);
"""


@dataclass(frozen=True)
class Verdict:
    status: str  # deployed | rejected
    reason: str
    report: dict[str, Any]


@dataclass(frozen=True)
class Current:
    model: str
    version: str
    sha256: str


class DeployState:
    """Thread-safe access to the state database (one connection, serialised)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def first_delivery(self, delivery_id: str, entity: str, action: str, model: str, version: str) -> bool:
        """Record a webhook delivery; False when this id was seen before (MLflow retried, or a replay)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?)",
                                   (delivery_id, time.time(), entity, action, model, version))
            return cur.rowcount == 1

    def verdict(self, target: str, model: str, version: str, sha256: str) -> Verdict | None:
        with self._lock:
            row = self._db.execute("SELECT status, reason, report FROM verdicts WHERE target=? AND model=? "
                                   "AND version=? AND sha256=?", (target, model, version, sha256)).fetchone()
        return Verdict(row[0], row[1], json.loads(row[2])) if row else None

    def record_verdict(self, target: str, model: str, version: str, sha256: str, verdict: Verdict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (target, model, version, sha256, verdict.status, verdict.reason,
                              json.dumps(verdict.report), time.time()))

    def current(self, target: str) -> Current | None:
        with self._lock:
            row = self._db.execute("SELECT model, version, sha256 FROM current WHERE target=?", (target,)).fetchone()
        return Current(*row) if row else None

    def set_current(self, target: str, current: Current, published_at: str, kind: str) -> None:
        """What ``target`` now runs; ``kind`` (deploy | rollback) goes into the deployment history."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO current VALUES (?, ?, ?, ?, ?)",
                             (target, current.model, current.version, current.sha256, published_at))
            self._db.execute("INSERT INTO deployments (target, model, version, sha256, kind, at) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (target, current.model, current.version, current.sha256, kind, time.time()))

    def history(self, target: str) -> list[tuple[str, str, str]]:
        """``(model, version, kind)`` of every publication to ``target``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT model, version, kind FROM deployments WHERE target=? ORDER BY id",
                                    (target,)).fetchall()
        return [tuple(r) for r in rows]
