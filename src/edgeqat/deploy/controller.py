"""The deploy controller: one worker reconciles each target's desired version with what it runs.

Webhook deliveries and the poller only *enqueue* a target; a single worker thread does the work, so
concurrent events for one target are serialised and the same event twice deploys once (the second
finds the target up to date). Reconciling is idempotent and reads everything from the registry and
the durable state, which is why a lost delivery, a legacy stage transition (no webhook exists for
it), or the controller's own downtime are all covered by the next poll.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from edgeqat.agent.manifest import HEARTBEAT_PREFIX
from edgeqat.agent.store import NotFound, open_store
from edgeqat.deploy.gate import Candidate, fetch_model, run_gate
from edgeqat.deploy.publish import publish_release
from edgeqat.deploy.signing import ManifestSigner
from edgeqat.deploy.state import Current, DeployState, Verdict
from edgeqat.deploy.targets import DeployTarget
from edgeqat.deploy.writeback import log_deployment_run, mark_superseded, write_verdict_tags
from edgeqat.registry.metadata import sha256_file
from edgeqat.registry.promote import resolve_version

log = logging.getLogger(__name__)
HEARTBEAT_MAX_AGE = timedelta(minutes=10)


@dataclass(frozen=True)
class WebhookEvent:
    """The parts of an MLflow registry webhook the controller acts on."""

    delivery_id: str
    entity: str
    action: str
    model_name: str
    version: str = ""
    key: str = ""  # the tag key (model_version_tag.*) or alias (model_version_alias.*)

    @classmethod
    def from_payload(cls, delivery_id: str, body: dict[str, Any]) -> WebhookEvent:
        data = body.get("data") or {}
        return cls(delivery_id, str(body.get("entity", "")), str(body.get("action", "")), str(data.get("name", "")),
                   str(data.get("version", "")), str(data.get("key") or data.get("alias") or ""))


class Controller:
    """Reconciles every target; :meth:`start` runs the worker and the poller threads."""

    def __init__(self, tracking_uri: str, targets: list[DeployTarget], state: DeployState, signer: ManifestSigner,
                 workdir: Path, poll_interval_s: float = 30.0) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.targets = {t.name: t for t in targets}
        self.state, self.signer, self.workdir = state, signer, Path(workdir)
        self.poll_interval_s = poll_interval_s
        self._queue: queue.Queue[tuple[str, str | None] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._surfaced: dict[tuple[str, str], str] = {}
        self.outcomes: deque[tuple[str, str]] = deque(maxlen=200)  # (target, outcome) of the latest passes

    # -- events ---------------------------------------------------------------------------------
    def handle_event(self, event: WebhookEvent) -> str:
        """``queued`` | ``duplicate`` | ``ignored``; never does the work itself (the worker does)."""
        if not self.state.first_delivery(event.delivery_id, event.entity, event.action, event.model_name,
                                         event.version):
            return "duplicate"
        if event.entity == "model_version_tag" and event.key.startswith("deploy."):
            return "ignored"  # our own verdict tags coming back
        queued = [t.name for t in self.targets.values() if t.model_name in (None, event.model_name)]
        for name in queued:
            self.submit(name, event.model_name)
        return "queued" if queued else "ignored"

    def submit(self, target: str, hint: str | None = None) -> None:
        self._queue.put((target, hint))

    # -- threads --------------------------------------------------------------------------------
    def start(self) -> Controller:
        for fn, name in ((self._work, "edgeqat-deploy-worker"), (self._poll, "edgeqat-deploy-poller")):
            thread = threading.Thread(target=fn, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            target, hint = item
            try:
                outcome = self.reconcile(self.targets[target], hint)
            except Exception as e:  # noqa: BLE001 - server or store away: the next poll retries
                outcome = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                log.warning("target %s: %s (retried at the next poll)", target, outcome)
            self.outcomes.append((target, outcome))

    def _poll(self) -> None:
        while not self._stop.is_set():
            for name in self.targets:
                self.submit(name)
            try:
                self.surface_heartbeats()
            except Exception as e:  # noqa: BLE001 - the store or the server may be away; try again later
                log.warning("heartbeats: %s", str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
            self._stop.wait(self.poll_interval_s)

    # -- reconciling ----------------------------------------------------------------------------
    def desired(self, target: DeployTarget, hint: str | None = None) -> Any | None:
        """The model version ``target`` should run: its alias (else its stage) on the first model that has it."""
        for name in self._model_names(target, hint):
            mv = resolve_version(self.client, name, alias=target.follows.alias) if target.follows.alias else None
            if mv is None and target.follows.stage:
                mv = resolve_version(self.client, name, stage=target.follows.stage)
            if mv is not None:
                return mv
        return None

    def _model_names(self, target: DeployTarget, hint: str | None) -> list[str]:
        if target.model_name:
            return [target.model_name]
        current = self.state.current(target.name)
        names = [hint, current.model if current else None]
        names += [rm.name for rm in self.client.search_registered_models(order_by=["last_updated_timestamp DESC"])]
        return list(dict.fromkeys(n for n in names if n))

    def reconcile(self, target: DeployTarget, hint: str | None = None) -> str:
        """Bring ``target`` to its desired version: gate + publish, republish (rollback), or nothing."""
        mv = self.desired(target, hint)
        if mv is None:
            return "nothing to deploy"
        cand = Candidate.from_model_version(mv)
        current = self.state.current(target.name)
        if current == Current(cand.model_name, cand.version, cand.sha256 or ""):
            return f"up to date ({cand.model_name} v{cand.version})"
        verdict = self.state.verdict(target.name, cand.model_name, cand.version, cand.sha256 or "")
        if verdict is not None and verdict.status == "rejected":
            return f"v{cand.version} was rejected: {verdict.reason}"
        if verdict is not None:
            return self._republish(target, cand, verdict, current)
        return self._gate_and_publish(target, cand, current)

    def _gate_and_publish(self, target: DeployTarget, cand: Candidate, current: Current | None) -> str:
        log.info("target %s: gating %s v%s", target.name, cand.model_name, cand.version)
        gated = run_gate(self.tracking_uri, target, cand, self.workdir)
        report = gated.report
        status = "deployed" if report.passed else "rejected"
        published_at = ""
        if report.passed:
            assert gated.model_path is not None and gated.preprocessing is not None
            payload = publish_release(open_store(target.publish), target.name, cand, gated.model_path,
                                      gated.preprocessing, report.metrics(), self.signer)
            published_at = payload.published_at
        verdict = Verdict(status, report.reason, report.to_dict())
        self.state.record_verdict(target.name, cand.model_name, cand.version, cand.sha256 or "", verdict)
        write_verdict_tags(self.client, target.name, cand, verdict, published_at)
        log_deployment_run(self.client, target.name, cand, verdict)
        if report.passed:
            self._now_running(target, cand, current, published_at, "deploy")
        log.info("target %s: %s v%s %s (%s)", target.name, cand.model_name, cand.version, status, report.reason)
        return f"{status} v{cand.version}: {report.reason}"

    def _republish(self, target: DeployTarget, cand: Candidate, verdict: Verdict, current: Current | None) -> str:
        """A version that passed before (a rollback): publish it again without re-gating."""
        import tempfile

        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            model_path, pre = fetch_model(self.tracking_uri, cand, Path(tmp))
            if sha256_file(model_path) != cand.sha256:
                return f"v{cand.version}: the registry's file no longer matches its sha256; not republished"
            metrics = {k: float(verdict.report[k]) for k in ("accuracy", "latency_p95_ms", "size_mb")
                       if verdict.report.get(k) is not None}
            payload = publish_release(open_store(target.publish), target.name, cand, model_path, pre, metrics,
                                      self.signer)
        write_verdict_tags(self.client, target.name, cand, verdict, payload.published_at)
        self._now_running(target, cand, current, payload.published_at, "rollback")
        return f"rolled back to v{cand.version}"

    def _now_running(self, target: DeployTarget, cand: Candidate, previous: Current | None, published_at: str,
                     kind: str) -> None:
        self.state.set_current(target.name, Current(cand.model_name, cand.version, cand.sha256 or ""),
                               published_at, kind)
        if previous is not None and (previous.model, previous.version) != (cand.model_name, cand.version):
            mark_superseded(self.client, target.name, previous.model, previous.version)

    # -- what the devices report ----------------------------------------------------------------
    def surface_heartbeats(self) -> dict[str, list[str]]:
        """``deploy.<target>.active_version`` on each registered model: versions its live agents run."""
        out: dict[str, list[str]] = {}
        for target in self.targets.values():
            store = open_store(target.publish)
            now = datetime.now(timezone.utc)
            by_model: dict[str, set[str]] = {}
            for key in store.list(HEARTBEAT_PREFIX):
                try:
                    beat = json.loads(store.get(key))
                    age = now - datetime.fromisoformat(beat.get("polled_at", "1970-01-01T00:00:00+00:00"))
                except (ValueError, TypeError, AttributeError, NotFound) as e:  # one bad heartbeat, not all
                    log.info("heartbeat %s unreadable: %s", key, e)
                    continue
                if beat.get("model_name") and beat.get("active_version") and age < HEARTBEAT_MAX_AGE:
                    by_model.setdefault(beat["model_name"], set()).add(str(beat["active_version"]))
            for model, versions in by_model.items():
                value = ",".join(sorted(versions, key=lambda v: int(v) if v.isdigit() else 0))
                key = f"deploy.{target.name}.active_version"
                if self._surfaced.get((model, key)) != value:
                    self.client.set_registered_model_tag(model, key, value)
                    self._surfaced[(model, key)] = value
                out[f"{target.name}:{model}"] = sorted(versions)
        return out
