"""Sweeps as a user runs them: one parent run, one child per job, the comparison on the parent.

Each sweep runs the real CLI (``edgeqat train -m``, ``mlflow run . -e sweep``) in a subprocess, so
Hydra's launchers run as they do for users: the basic one in that process, joblib in worker
processes, submitit in a process per job. What is checked is read back from the MLflow store,
never from the sweep's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from edgeqat.sweep.job import JOB_TAG, OVERRIDES_TAG
from edgeqat.sweep.run import BEST_TAG, SWEEP_TAG
from edgeqat.tracking.run import FAILURE_TAG, PARENT_TAG
from edgeqat.tracking.summary import NOTE_TAG
from tests.e2e.test_cli import REPO, _env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY = ["data=digits", "data.image_size=16", "model=resnet18", "model.name=test_resnet", "trainer.max_epochs=1",
        "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false", "quant.benchmark_resolutions=[]",
        "quant.latency_iters=5", "quant.calibration_batches=2"]
GRID = ["quant=fp32,ptq_int8", "seed=1,2"]
LABELS = {"quant=fp32 seed=1", "quant=fp32 seed=2", "quant=ptq_int8 seed=1", "quant=ptq_int8 seed=2"}


def _sweep(args: list[str], tracking_uri: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeqat", "train", "-m", *args, f"output_dir={cwd}/outputs"],
                          env=_env(tracking_uri), cwd=cwd, capture_output=True, text=True, timeout=600)


def _family(tracking_uri: str, experiment: str) -> tuple[MlflowClient, object, list]:
    """The sweep's parent run and its children, from the store."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(SWEEP_TAG) == "parent"]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(runs) == 1 + len(children)
    return client, parent, sorted(children, key=lambda r: int(r.data.tags[JOB_TAG]))


def _summary(client: MlflowClient, run_id: str) -> list[dict]:
    table = json.loads(Path(client.download_artifacts(run_id, "sweep/summary.json")).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def _check_grid(client: MlflowClient, parent, children: list) -> None:
    """Four finished children, their table on the parent, the figure, and the best child's figures copied."""
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED"] * 4
    assert {c.data.tags[OVERRIDES_TAG] for c in children} == LABELS
    assert all(c.info.run_name == c.data.tags[OVERRIDES_TAG] for c in children)
    rows = _summary(client, parent.info.run_id)
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    by_id = {c.info.run_id: c for c in children}
    for row in rows:  # every cell is the child's own metric
        m = by_id[row["run_id"]].data.metrics
        assert row["acc_fp32"] == pytest.approx(m["test/acc_fp32"])
        assert row["acc_int8"] == (pytest.approx(m["test/acc_int8"]) if "test/acc_int8" in m else None)
        assert row["format"] == ("int8" if "ptq" in row["overrides"] else "fp32")
    assert any(row["pareto"] for row in rows)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} == {"sweep/summary.json",
                                                                                    "sweep/pareto.png"}
    quantized = [c for c in children if "test/acc_int8" in c.data.metrics]
    best = max(quantized, key=lambda c: c.data.metrics["test/acc_int8"])  # the default rule: highest acc_int8
    assert parent.data.tags[BEST_TAG] == best.info.run_id
    assert parent.data.metrics["test/acc_int8"] == best.data.metrics["test/acc_int8"]
    assert parent.data.metrics["sweep/finished"] == 4 and parent.data.metrics["sweep/failed"] == 0
    assert parent.data.tags[NOTE_TAG].startswith("Sweep of 4 jobs: 4 finished, 0 failed; best by acc_int8")


def test_mlflow_run_sweep_is_the_parent_of_one_child_per_job(tracking_uri: str, tmp_path: Path) -> None:
    overrides = " ".join([*TINY, *GRID, f"output_dir={tmp_path}/outputs"])
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "sweep", "--env-manager", "local",
                           "--experiment-name", "sweep-mlflow-run", "-P", f"overrides={overrides}"],
                          capture_output=True, text=True, env=_env(tracking_uri), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = _family(tracking_uri, "sweep-mlflow-run")
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep"  # MLflow's own run is the parent
    _check_grid(client, parent, children)


def test_joblib_launcher_runs_the_jobs_in_worker_processes(tracking_uri: str, tmp_path: Path) -> None:
    proc = _sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, *GRID,
                   "tracking.experiment_name=sweep-joblib"], tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = _family(tracking_uri, "sweep-joblib")
    # Hydra's own record of the sweep, in the folder named after the parent: its joblib launcher ran the jobs
    multirun = (tmp_path / "outputs" / "sweeps" / parent.info.run_id / "multirun.yaml").read_text()
    assert "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher" in multirun
    _check_grid(client, parent, children)
    assert f"sweep {parent.info.run_id}: 4 of 4 jobs finished" in proc.stdout


def test_a_failed_child_is_recorded_and_the_sweep_goes_on(tracking_uri: str, tmp_path: Path) -> None:
    # under submitit, which pickles each job into a process of its own (on SLURM: another machine), so
    # the job finds its parent, and records its own failure, through its config alone
    proc = _sweep(["hydra/launcher=submitit_local", *TINY, "quant=fp32", "model.name=test_resnet,no_such_net",
                   "sweep.best=accuracy", "tracking.experiment_name=sweep-failing"], tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "job 1 (model.name=no_such_net) FAILED: UnknownModelError" in proc.stderr
    client, parent, (good, bad) = _family(tracking_uri, "sweep-failing")
    sweep_dir = tmp_path / "outputs" / "sweeps" / parent.info.run_id
    assert "hydra_submitit_launcher" in (sweep_dir / "multirun.yaml").read_text()
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit's own record of 2 jobs
    assert (good.info.status, bad.info.status) == ("FINISHED", "FAILED")
    assert bad.data.tags[FAILURE_TAG].startswith("UnknownModelError: Unknown model 'no_such_net'")  # failed in build
    assert bad.data.tags[NOTE_TAG].startswith("Failed: UnknownModelError")
    assert parent.info.status == "FINISHED"
    assert [(r["status"], r["run_id"]) for r in _summary(client, parent.info.run_id)] == [
        ("FINISHED", good.info.run_id), ("FAILED", bad.info.run_id)]
    assert parent.data.tags[BEST_TAG] == good.info.run_id  # the only finished one, by sweep.best=accuracy
    assert "1 finished, 1 failed" in parent.data.tags[NOTE_TAG]


def test_a_sweep_where_every_job_fails_ends_failed(tracking_uri: str, tmp_path: Path) -> None:
    proc = _sweep([*TINY, "quant=fp32", "model.name=no_such_net,no_such_net2",
                   "tracking.experiment_name=sweep-all-failed"], tracking_uri, tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    client, parent, children = _family(tracking_uri, "sweep-all-failed")
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags[FAILURE_TAG].startswith("SweepFailed: none of the 2 jobs finished")
