"""The device side of the deployment loop: poll the signed manifest, verify, download, smoke-test, activate.

The device keeps serving whatever ``<home>/active.json`` names until a release passes every check,
so an outage, a tampered manifest or a broken model never leaves it without a model::

    <home>/active.json                       the model being served (written atomically)
    <home>/releases/v<ver>-<sha12>/model.onnx   the 3 most recent releases: a rollback is a local copy
    <home>/refused.json                      manifests refused before (by sha256): not downloaded again

After each poll that reached the store the agent writes ``heartbeats/<agent_id>.json`` there, so the
controller sees what every device runs and why it refused a release.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from edgeqat.agent.manifest import HEARTBEAT_PREFIX, MANIFEST_KEY, ManifestError, ReleasePayload, SignatureError, \
    parse_manifest
from edgeqat.agent.predictor import ACTIVE_FILE, ActiveModel, NoActiveModel, Predictor, SmokeTestError, \
    read_active, sha256_file, smoke_test
from edgeqat.agent.store import NotFound, Store, StoreError, write_atomic
from edgeqat.errors import EdgeqatError

__all__ = ["Agent", "AgentError", "PollResult", "Predictor", "State", "KEEP_RELEASES"]

log = logging.getLogger("edgeqat.agent")

State = Literal["activated", "unchanged", "refused", "unreachable"]
KEEP_RELEASES = 3
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REFUSED_FILE, _MAX_REFUSED = "refused.json", 32


class AgentError(EdgeqatError):
    """A bad agent argument (target or agent id) or an unusable home directory."""


@dataclass(frozen=True)
class PollResult:
    """What one poll did: ``state``, the version it concerns (if any) and why."""

    state: State
    version: str | None = None
    reason: str = ""

    def __str__(self) -> str:
        return self.state + (f" v{self.version}" if self.version else "") + (f": {self.reason}" if self.reason else "")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Agent:
    """Polls one target's location and serves the newest release that passes every check.

    Args:
        store: the deployment location (see :func:`edgeqat.agent.store.open_store`).
        home: the device's own directory for releases and ``active.json``.
        public_key: the raw 32-byte Ed25519 key manifests must be signed with.
        target: the deployment target; a manifest for another target is refused.
        agent_id: names this device's heartbeat; default the hostname.
    """

    def __init__(self, store: Store, home: str | Path, public_key: bytes, target: str,
                 agent_id: str | None = None) -> None:
        agent_id = agent_id or socket.gethostname()
        for name, value in (("target", target), ("agent id", agent_id)):
            if not _ID_RE.match(value):
                raise AgentError(f"{name} {value!r} must be letters, digits, '.', '_' or '-' (at most 128)")
        if len(public_key) != 32:
            raise AgentError(f"the public key is {len(public_key)} bytes; an Ed25519 key is 32")
        self.store, self.home, self.public_key = store, Path(home), public_key
        self.target, self.agent_id = target, agent_id
        self.releases = self.home / "releases"
        try:
            self.releases.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AgentError(f"cannot create the agent home {self.home} ({e}): pass a writable --home") from None
        try:
            self.active: ActiveModel | None = read_active(self.home)
        except NoActiveModel as e:
            log.warning("%s; starting with no active model", e)
            self.active = None
        self._refused = self._load_refused()
        self._cpu: tuple[str, str] | None = None

    # -- one poll --------------------------------------------------------------------------------

    def poll_once(self) -> PollResult:
        """Check the location once; activate a new release if it passes, then write the heartbeat."""
        result = self._poll()
        if result.state != "unreachable":
            self._heartbeat(result)
        return result

    def _poll(self) -> PollResult:
        try:
            data = self.store.get(MANIFEST_KEY)
        except NotFound:
            return PollResult("unchanged", self._active_version, "nothing published yet")
        except StoreError as e:
            return PollResult("unreachable", self._active_version, str(e))
        digest = hashlib.sha256(data).hexdigest()
        try:
            payload = parse_manifest(data, self.public_key)
        except SignatureError as e:
            return self._refuse(digest, None, f"bad signature: {e}")
        except ManifestError as e:
            return self._refuse(digest, None, f"bad manifest: {e}")
        if payload.target != self.target:
            return self._refuse(digest, payload.version,
                                f"manifest is for target {payload.target!r}, this agent serves {self.target!r}")
        if (self.active is not None and (payload.model_name, payload.version, payload.sha256)
                == (self.active.model_name, self.active.version, self.active.sha256)
                and self.active.model_path.is_file()):
            return PollResult("unchanged", self.active.version)
        if digest in self._refused:
            return PollResult("refused", payload.version, f"{self._refused[digest]} (refused before; not retried)")
        return self._install(digest, payload)

    def _install(self, digest: str, payload: ReleasePayload) -> PollResult:
        release = self.releases / payload.release_dir
        model = release / "model.onnx"
        reused = model.is_file() and sha256_file(model) == payload.sha256
        if not reused:
            try:
                self.store.download(payload.model_key, model)
            except NotFound:  # the publisher may still be uploading: not remembered as refused
                return PollResult("refused", payload.version, f"model {payload.model_key} is missing from the store")
            except StoreError as e:
                return PollResult("unreachable", self._active_version, str(e))
            actual = sha256_file(model)
            if actual != payload.sha256:
                shutil.rmtree(release, ignore_errors=True)
                return self._refuse(digest, payload.version,
                                    f"sha256 mismatch: manifest {payload.sha256}, file {actual}")
        size = model.stat().st_size
        if size != payload.size_bytes:
            shutil.rmtree(release, ignore_errors=True)
            return self._refuse(digest, payload.version,
                                f"size mismatch: manifest {payload.size_bytes} bytes, file {size} bytes")
        try:
            smoke_test(model, payload.preprocessing)
        except SmokeTestError as e:
            shutil.rmtree(release, ignore_errors=True)
            return self._refuse(digest, payload.version, str(e))
        self._activate(payload, model)
        return PollResult("activated", payload.version, "local copy reused" if reused else "")

    def _activate(self, payload: ReleasePayload, model: Path) -> None:
        active = ActiveModel(model_name=payload.model_name, version=payload.version, sha256=payload.sha256,
                             model_path=model.resolve(), preprocessing=payload.preprocessing,
                             target=self.target, activated_at=_now(), manifest=payload.to_dict())
        write_atomic(self.home / ACTIVE_FILE, json.dumps(active.to_dict(), indent=2).encode() + b"\n")
        os.utime(model.parent)  # recency for pruning is "last activated", so a rollback counts as recent
        self.active = active
        self._prune()

    def _prune(self) -> None:
        """Keep the :data:`KEEP_RELEASES` most recently activated release directories, always the active one."""
        dirs = sorted((d for d in self.releases.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime,
                      reverse=True)
        active_dir = self.active.model_path.parent if self.active else None
        keep = {d.name for d in dirs[:KEEP_RELEASES]} | ({active_dir.name} if active_dir else set())
        for d in dirs:
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    # -- refusals --------------------------------------------------------------------------------

    def _load_refused(self) -> dict[str, str]:
        try:
            data = json.loads((self.home / _REFUSED_FILE).read_text())
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, digest: str, version: str | None, reason: str) -> PollResult:
        if self._refused.get(digest) == reason:  # the same bad manifest polled again: nothing new to record
            return PollResult("refused", version, reason)
        self._refused[digest] = reason
        while len(self._refused) > _MAX_REFUSED:
            self._refused.pop(next(iter(self._refused)))
        try:
            write_atomic(self.home / _REFUSED_FILE, json.dumps(self._refused, indent=2).encode())
        except OSError as e:
            log.warning("cannot record the refusal in %s (%s)", self.home, e)
        return PollResult("refused", version, reason)

    # -- heartbeat -------------------------------------------------------------------------------

    @property
    def _active_version(self) -> str | None:
        return self.active.version if self.active else None

    def _cpu_info(self) -> tuple[str, str]:
        if self._cpu is None:
            from edgeqat.quant.isa import detect_cpu

            cpu = detect_cpu()
            self._cpu = (cpu.model, cpu.isa.value)
        return self._cpu

    def heartbeat(self, result: PollResult) -> dict[str, Any]:
        """The heartbeat document for ``result``: what this device serves, and what the last poll did."""
        import onnxruntime as ort

        cpu, isa = self._cpu_info()
        a = self.active
        return {"agent_id": self.agent_id, "target": self.target, "hostname": socket.gethostname(),
                "model_name": a.model_name if a else None, "active_version": a.version if a else None,
                "active_sha256": a.sha256 if a else None, "state": result.state, "reason": result.reason,
                "polled_at": _now(), "activated_at": a.activated_at if a else None, "cpu": cpu, "isa": isa,
                "onnxruntime": ort.__version__, "pid": os.getpid()}

    def _heartbeat(self, result: PollResult) -> None:
        try:
            doc = self.heartbeat(result)
            self.store.put(f"{HEARTBEAT_PREFIX}{self.agent_id}.json", json.dumps(doc, indent=2).encode() + b"\n")
        except Exception as e:  # a heartbeat is best effort: serving never depends on it
            log.warning("heartbeat not written (%s)", e)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event, interval_s: float = 2.0, max_backoff_s: float = 60.0) -> None:
        """Poll until ``stop`` is set; while the store is unreachable, back off exponentially.

        The active model stays in place throughout. One log line per change of state, not per poll.
        """
        if interval_s <= 0 or max_backoff_s < interval_s:
            raise AgentError(f"interval {interval_s} s must be > 0 and <= the maximum backoff {max_backoff_s} s")
        failures, last = 0, None
        while not stop.is_set():
            try:
                result = self.poll_once()
            except Exception as e:  # a bug or a full disk must not take the device's model away
                log.exception("poll failed unexpectedly")
                result = PollResult("refused", self._active_version, f"internal error: {e}")
            key = (result.state,) if result.state == "unreachable" else (result.state, result.version, result.reason)
            if key != last:
                log.log(logging.WARNING if result.state in ("refused", "unreachable") else logging.INFO,
                        "%s (serving %s)", result, f"v{self._active_version}" if self.active else "nothing")
                last = key
            if result.state == "unreachable":
                delay = min(interval_s * 2 ** min(failures, 20), max_backoff_s) * random.uniform(1.0, 1.1)
                failures += 1
            else:
                failures, delay = 0, interval_s
            stop.wait(delay)
