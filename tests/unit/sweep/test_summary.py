"""The parent's comparison: rows read back from MLflow, the Pareto front, the best child by its rule."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from edgeqat.sweep.job import JOB_TAG, OVERRIDES_TAG
from edgeqat.sweep.summary import COLUMNS, ChildRow, best_child, child_rows, figure, pareto_front, table
from edgeqat.tracking.run import FAILURE_TAG, PARENT_TAG


def _row(job: int, acc: float | None, latency: float | None, status: str = "FINISHED", **kw) -> ChildRow:
    return ChildRow(job=job, overrides=f"job={job}", status=status, format="int8", accuracy=acc, acc_int8=acc,
                    latency_ms=latency, run_id=f"r{job}", **kw)


ROWS = [_row(0, 0.90, 1.0), _row(1, 0.95, 2.0), _row(2, 0.93, 2.5),  # 2: slower and less accurate than 1
        _row(3, 0.97, 4.0), _row(4, 0.99, 9.0, status="FAILED"), _row(5, None, None, status="FAILED")]


def test_the_front_keeps_what_nothing_beats_on_both_axes() -> None:
    assert [r.job for r in pareto_front(ROWS)] == [0, 1, 3]  # 2 is dominated by 1; failed jobs never count


def test_a_tie_on_one_axis_is_dominated_by_the_better_other_axis() -> None:
    assert [r.job for r in pareto_front([_row(0, 0.9, 1.0), _row(1, 0.9, 2.0), _row(2, 0.95, 1.0)])] == [2]


@pytest.mark.parametrize(("column", "mode", "budget", "best"), [
    ("acc_int8", "max", None, 3),  # the failed job 4 had the highest accuracy: it does not compete
    ("acc_int8", "max", 2.2, 1),  # within the latency budget
    ("latency_ms", "min", None, 0),
    ("acc_int8", "max", 0.5, None),  # nothing fits
    ("speedup", "max", None, None),  # no child has it
])
def test_best_child_follows_the_rule(column: str, mode: str, budget: float | None, best: int | None) -> None:
    got = best_child(ROWS, column, mode, budget)
    assert (got.job if got else None) == best


def test_a_nan_metric_never_wins() -> None:
    rows = [_row(0, math.nan, 1.0), _row(1, 0.5, 1.0)]
    assert best_child(rows, "acc_int8", "max", None).job == 1


def test_the_table_has_every_column_and_marks_the_front() -> None:
    t = table(ROWS, pareto_front(ROWS))
    assert set(COLUMNS) <= set(t) and all(len(v) == len(ROWS) for v in t.values())
    assert t["pareto"] == [True, True, False, True, False, False]
    assert figure(ROWS, pareto_front(ROWS), ROWS[3], 5.0).axes[0].get_xlabel().startswith("batch-1 latency")


def test_children_are_read_back_from_mlflow(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("sweep")
    parent = client.create_run(exp).info.run_id
    other = client.create_run(exp).info.run_id  # another sweep's child: not ours
    for job, (status, metrics, extra) in enumerate([
        ("FINISHED", {"test/acc_int8": 0.9, "test/acc_fp32": 0.91, "int8/latency_ms": 1.5, "int8/size_mb": 0.4,
                      "int8/speedup": 2.0, "int8/acc_drop": 0.01}, {}),
        ("FINISHED", {"test/acc_fp32": 0.92, "fp32/latency_ms": 3.0, "fp32/size_mb": 1.6}, {}),
        ("FAILED", {}, {FAILURE_TAG: "UnknownModelError: Unknown model 'nope'"}),
    ]):
        run = client.create_run(exp, tags={PARENT_TAG: parent, JOB_TAG: str(job), OVERRIDES_TAG: f"seed={job}",
                                           **extra}).info.run_id
        for k, v in metrics.items():
            client.log_metric(run, k, v)
        client.set_terminated(run, status)
    client.create_run(exp, tags={PARENT_TAG: other, JOB_TAG: "0"})

    rows = child_rows(client, parent)
    assert [(r.job, r.overrides, r.status, r.format) for r in rows] == [
        (0, "seed=0", "FINISHED", "int8"), (1, "seed=1", "FINISHED", "fp32"), (2, "seed=2", "FAILED", None)]
    int8, fp32, failed = rows
    assert (int8.accuracy, int8.latency_ms, int8.size_mb, int8.speedup) == (0.9, 1.5, 0.4, 2.0)
    assert (fp32.accuracy, fp32.latency_ms, fp32.size_mb, fp32.acc_int8) == (0.92, 3.0, 1.6, None)
    assert failed.failure.startswith("UnknownModelError") and failed.accuracy is None
