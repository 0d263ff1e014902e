"""The parent run of a sweep is the comparison: one row per child, the Pareto front, the best child.

Read back from MLflow rather than from the launcher's return values, so the summary is the same
whichever launcher ran the jobs (and a child that died with its process still shows, as FAILED).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeqat.sweep.job import JOB_TAG, OVERRIDES_TAG
from edgeqat.tracking.run import FAILURE_TAG, PARENT_TAG

# table column -> the child's metric; "accuracy"/"latency_ms"/"size_mb" are the shipped model's:
# the INT8 file's where the job made one, else the FP32 file's (a quant=fp32 job in the sweep)
METRICS = {"acc_fp32": "test/acc_fp32", "acc_int8": "test/acc_int8", "acc_ptq": "test/acc_ptq",
           "acc_drop": "int8/acc_drop", "agreement": "int8/top1_agreement", "speedup": "int8/speedup"}


@dataclass(frozen=True)
class ChildRow:
    """One job of the sweep as the summary table shows it (None: the job did not get that far)."""

    job: int
    overrides: str
    status: str
    format: str | None = None  # int8 | fp32: what `accuracy`, `latency_ms` and `size_mb` describe
    accuracy: float | None = None
    acc_fp32: float | None = None
    acc_int8: float | None = None
    acc_ptq: float | None = None
    acc_drop: float | None = None
    agreement: float | None = None
    latency_ms: float | None = None
    speedup: float | None = None
    size_mb: float | None = None
    run_id: str = ""
    failure: str = ""


COLUMNS = tuple(f.name for f in fields(ChildRow))


def child_rows(client: Any, parent_run_id: str) -> list[ChildRow]:
    """Every child run of ``parent_run_id``, in job order."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10000)
    rows = [_row(run) for run in runs]
    return sorted(rows, key=lambda r: (r.job, r.run_id))


def _row(run: Any) -> ChildRow:
    m, tags = run.data.metrics, run.data.tags
    shipped = "int8" if "test/acc_int8" in m else "fp32" if "test/acc_fp32" in m else None
    return ChildRow(
        job=int(tags.get(JOB_TAG, -1)), overrides=tags.get(OVERRIDES_TAG, run.info.run_name or ""),
        status=run.info.status, format=shipped,
        accuracy=m.get(f"test/acc_{shipped}") if shipped else None,
        **{column: m.get(key) for column, key in METRICS.items()},
        latency_ms=m.get(f"{shipped}/latency_ms") if shipped else None,
        size_mb=m.get(f"{shipped}/size_mb") if shipped else None,
        run_id=run.info.run_id, failure=tags.get(FAILURE_TAG, ""))


def pareto_front(rows: Sequence[ChildRow]) -> list[ChildRow]:
    """Finished children no other beats on both accuracy (higher) and latency (lower), fastest first."""
    points = [r for r in rows if r.status == "FINISHED" and r.accuracy is not None and r.latency_ms is not None]

    def dominated(r: ChildRow) -> bool:
        return any(o.accuracy >= r.accuracy and o.latency_ms <= r.latency_ms
                   and (o.accuracy > r.accuracy or o.latency_ms < r.latency_ms) for o in points)

    return sorted((r for r in points if not dominated(r)), key=lambda r: r.latency_ms)


def best_child(rows: Sequence[ChildRow], column: str, mode: str, max_latency_ms: float | None) -> ChildRow | None:
    """The finished child with the highest (``max``) or lowest ``column`` within the latency budget."""
    ok = [r for r in rows if r.status == "FINISHED" and getattr(r, column) is not None
          and not math.isnan(getattr(r, column))
          and (max_latency_ms is None or (r.latency_ms is not None and r.latency_ms <= max_latency_ms))]
    if not ok:
        return None
    pick = max if mode == "max" else min
    return pick(ok, key=lambda r: getattr(r, column))


def table(rows: Sequence[ChildRow], front: Sequence[ChildRow]) -> dict[str, list]:
    """Columns for ``mlflow.log_table`` (the UI shows it as a table), plus whether a row is on the front."""
    on_front = {r.run_id for r in front}
    out: dict[str, list] = {c: [getattr(r, c) for r in rows] for c in COLUMNS}
    out["pareto"] = [r.run_id in on_front for r in rows]
    return out


def figure(rows: Sequence[ChildRow], front: Sequence[ChildRow], best: ChildRow | None, budget: float | None) -> Any:
    """Accuracy vs batch-1 latency, one point per finished child, the Pareto front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for fmt, marker in (("int8", "o"), ("fp32", "s")):
        pts = [r for r in rows if r.format == fmt and r.status == "FINISHED" and r.latency_ms is not None]
        if pts:
            ax.scatter([r.latency_ms for r in pts], [r.accuracy for r in pts], marker=marker, s=40,
                       label=f"{fmt.upper()} file", zorder=3)
        for r in pts:
            ax.annotate(r.overrides, (r.latency_ms, r.accuracy), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    if front:
        ax.plot([r.latency_ms for r in front], [r.accuracy for r in front], "--", color="grey", zorder=2,
                label="Pareto front")
    if best is not None and best.latency_ms is not None:
        ax.scatter([best.latency_ms], [best.accuracy], s=220, facecolors="none", edgecolors="red", zorder=4,
                   label="best child")
    if budget is not None:
        ax.axvline(budget, color="red", linewidth=0.8, linestyle=":", label=f"latency budget {budget:g} ms")
    ax.set_xlabel("batch-1 latency on this CPU (ms)")
    ax.set_ylabel("test accuracy of the shipped file")
    ax.set_title("Sweep: accuracy vs latency")
    ax.margins(0.15)  # room for the labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rows_to_dicts(rows: Sequence[ChildRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
