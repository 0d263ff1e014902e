"""``edgeqat train -m ...``: a Hydra multirun as one parent MLflow run with a child run per job.

The parent is opened first (or is ``mlflow run``'s own run, ``-e sweep``), its id goes into every
job's config, Hydra's configured launcher runs the jobs, and the parent then reads its children
back from MLflow to summarize them (``sweep/summary.py``). The parent ends FAILED only when no job
finished.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeqat.sweep.plan import SweepPlan, override_key, plan_sweep
from edgeqat.sweep.summary import ChildRow, best_child, child_rows, figure, pareto_front, table

if TYPE_CHECKING:
    from edgeqat.tracking import RunRecorder

log = logging.getLogger(__name__)

SWEEP_TAG = "edgeqat.sweep"  # "parent" on the sweep's own run
BEST_TAG = "edgeqat.sweep.best_run_id"
BEST_OVERRIDES_TAG = "edgeqat.sweep.best_overrides"


class SweepFailed(RuntimeError):
    """No job of the sweep finished (or the launcher itself stopped): the parent ends FAILED."""


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    status: str  # the parent's: FINISHED, or FAILED when no child finished
    rows: list[ChildRow]
    best: ChildRow | None
    missing: int  # jobs with no child run at all (their process died before MLflow heard of them)


def run_sweep(overrides: Sequence[str]) -> SweepResult:
    """Plan (every job's config checked), open the parent, launch, summarize; see the module docstring."""
    from edgeqat.tracking import tracked_run
    from edgeqat.tracking.secrets import scrub_secrets
    from edgeqat.tracking.summary import NOTE_TAG

    plan = plan_sweep(overrides)
    cfg, tc = plan.config, plan.config.tracking
    name = tc.run_name or f"sweep: {' '.join(o for o in overrides if override_key(o) in plan.keys)}"
    rows: list[ChildRow] = []
    best, status, parent_id = None, "FINISHED", ""
    try:
        with tracked_run(tc.tracking_uri, tc.experiment_name, cfg.output_dir, name, {SWEEP_TAG: "parent"},
                         tc.close_timeout_s, tc.batch_window_s) as parent:
            parent_id, rec = parent.run_id, parent.recorder
            params = {"sweep.jobs": len(plan.jobs), "sweep.best": cfg.sweep.best, "sweep.mode": cfg.sweep.mode,
                      "sweep.max_latency_ms": cfg.sweep.max_latency_ms}
            if "overrides" not in rec.client.get_run(parent_id).data.params:  # `mlflow run -e sweep` logged it
                params["overrides"] = scrub_secrets(" ".join(overrides))[:6000]
            rec.log_params(params)
            rec.set_tags({NOTE_TAG: f"Sweep of {len(plan.jobs)} jobs ({', '.join(plan.keys) or 'no swept key'}) "
                                    f"running; each job is a child run below."})
            _launch(plan, parent_id, parent.tracking_uri)
            rows = child_rows(rec.client, parent_id)
            best = _summarize(rec, plan, rows)
            if not any(r.status == "FINISHED" for r in rows):
                raise SweepFailed(f"none of the {len(plan.jobs)} jobs finished"
                                  + (f"; the first failure: {rows[0].failure}" if rows and rows[0].failure else ""))
    except SweepFailed as e:
        log.error("sweep %s: %s", parent_id, e)
        status = "FAILED"
    return SweepResult(parent_id, status, rows, best, max(0, len(plan.jobs) - len(rows)))


def _summarize(rec: RunRecorder, plan: SweepPlan, rows: list[ChildRow]) -> ChildRow | None:
    """The summary table, the figure, the counts and the best child (tags + its metrics) on the parent."""
    from edgeqat.tracking.summary import NOTE_TAG

    s = plan.config.sweep
    front = pareto_front(rows)
    best = best_child(rows, s.best, s.mode, s.max_latency_ms)
    finished = sum(r.status == "FINISHED" for r in rows)
    failed = sum(r.status == "FAILED" for r in rows)
    if rows:
        rec.log_table(table(rows, front), "sweep/summary.json")
        rec.log_figure(figure(rows, front, best, s.max_latency_ms), "sweep/pareto.png")
    rec.log_metrics({"sweep/jobs": len(plan.jobs), "sweep/finished": finished, "sweep/failed": failed})
    line = f"Sweep of {len(plan.jobs)} jobs: {finished} finished, {failed} failed"
    if len(rows) < len(plan.jobs):
        line += f", {len(plan.jobs) - len(rows)} never reached MLflow"
    if best is None:
        budget = f" within {s.max_latency_ms:g} ms" if s.max_latency_ms is not None else ""
        rec.set_tags({NOTE_TAG: f"{line}; no finished job has {s.best}{budget}."})
        return best
    copied = {k: v for k, v in rec.client.get_run(best.run_id).data.metrics.items() if "/class_acc/" not in k}
    rec.log_metrics(copied)  # the parent sorts and compares in the UI by its best child's figures
    rec.set_tags({BEST_TAG: best.run_id, BEST_OVERRIDES_TAG: best.overrides,
                  NOTE_TAG: f"{line}; best by {s.best} ({s.mode}): {best.overrides} "
                            f"({_headline(best)})."})
    return best


def _headline(row: ChildRow) -> str:
    parts = [f"{row.format.upper()} test accuracy {row.accuracy:.3f}" if row.accuracy is not None else ""]
    if row.latency_ms is not None:
        parts.append(f"{row.latency_ms:.2f} ms")
    if row.speedup is not None:
        parts.append(f"{row.speedup:.1f}x the FP32 speed")
    return ", ".join(p for p in parts if p)


def _launch(plan: SweepPlan, parent_id: str, tracking_uri: str) -> None:
    """Hydra's multirun with the configured launcher; each job's config names the parent and the swept keys."""
    import hydra

    from edgeqat.config import config_dir
    from edgeqat.sweep.job import sweep_job
    from edgeqat.tracking.run import Preempted

    wiring = [f"tracking.parent_run_id={parent_id}", f"sweep.swept_keys=[{','.join(plan.keys)}]"]
    if plan.config.tracking.tracking_uri is None and "@" not in tracking_uri:
        # where this process logs, spelled so that a job on another machine or directory finds it too
        wiring.append(f"tracking.tracking_uri={_absolute(tracking_uri)}")
    main = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(sweep_job)
    try:
        with _argv(["edgeqat", "--multirun", *plan.overrides, *wiring]):
            main()
    except Preempted:
        raise
    except SystemExit as e:  # Hydra reports its own errors (a launcher that cannot start) and exits
        if e.code not in (0, None):
            raise SweepFailed(f"Hydra stopped the sweep (exit {e.code}): see its message above") from e


def _absolute(uri: str) -> str:
    """``sqlite:///mlflow.db`` relative to this directory -> an absolute one; other URIs as they are."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """``hydra.main`` reads its arguments from ``sys.argv`` (its only public entry point for a multirun)."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved
