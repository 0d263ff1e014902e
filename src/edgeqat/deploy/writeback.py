"""The verdict goes back where people look: version tags, and a run in the ``edgeqat-deployments`` experiment."""

from __future__ import annotations

import logging
from typing import Any

from edgeqat.deploy.gate import Candidate
from edgeqat.deploy.state import Verdict

log = logging.getLogger(__name__)
DEPLOY_EXPERIMENT = "edgeqat-deployments"
_REPORT_TAGS = {"accuracy": "acc", "latency_p95_ms": "latency_p95_ms", "latency_p50_ms": "latency_p50_ms",
                "size_mb": "size_mb"}


def write_verdict_tags(client: Any, target: str, cand: Candidate, verdict: Verdict, published_at: str) -> None:
    """``deploy.<target>.status|reason|acc|latency_p95_ms|size_mb|cpu|isa|published_at`` on the version."""
    prefix = f"deploy.{target}."
    tags = {"reason": verdict.reason[:4000], "cpu": str(verdict.report.get("cpu", "")),
            "isa": str(verdict.report.get("isa", ""))}
    tags.update({tag: f"{verdict.report[k]:.6g}" for k, tag in _REPORT_TAGS.items()
                 if verdict.report.get(k) is not None})
    if published_at:
        tags["published_at"] = published_at
    tags["status"] = verdict.status  # last: a reader who sees the status sees the figures too
    for key, value in tags.items():
        client.set_model_version_tag(cand.model_name, cand.version, prefix + key, value)


def mark_superseded(client: Any, target: str, model: str, version: str) -> None:
    """The version a target ran before: no longer ``deployed`` there."""
    try:
        client.set_model_version_tag(model, version, f"deploy.{target}.status", "superseded")
    except Exception as e:  # noqa: BLE001 - the old version may have been deleted
        log.info("could not mark %s v%s superseded: %s", model, version, e)


def log_deployment_run(client: Any, target: str, cand: Candidate, verdict: Verdict) -> str:
    """One run per gate decision: metrics, verdict tags, and the gate's full report."""
    experiment = client.get_experiment_by_name(DEPLOY_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(DEPLOY_EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"{target}: {cand.model_name} v{cand.version}", tags={
        "deploy.target": target, "deploy.model": cand.model_name, "deploy.version": cand.version,
        "deploy.status": verdict.status, "deploy.reason": verdict.reason[:4000],
        "deploy.source_run_id": cand.run_id, "edgeqat.cpu": str(verdict.report.get("cpu", "")),
        "edgeqat.isa": str(verdict.report.get("isa", "")),
    })
    run_id = run.info.run_id
    for key in ("accuracy", "acc_drop", "latency_p50_ms", "latency_p95_ms", "size_mb"):
        if verdict.report.get(key) is not None:
            client.log_metric(run_id, f"gate/{key}", float(verdict.report[key]))
    client.log_dict(run_id, verdict.report, "gate_report.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
