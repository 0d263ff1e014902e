"""The product as a user runs it: the ``edgeqat`` CLI and ``mlflow run .`` in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TINY = "data=digits data.image_size=16 model=mobilenetv3_small_100 quant=fp32 trainer.max_epochs=1 " \
       "trainer.enable_progress_bar=false trainer.limit_train_batches=4 trainer.log_every_n_steps=2"


def _env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def _runs(tracking_uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["model=nope"], "Unknown model config 'nope'"),
    (["model.name=resnet181"], "Did you mean 'resnet18'"),
    (["trainer.max_epochs=abc"], "Bad value for trainer.max_epochs"),
    (["data.root=/missing"], "use data=imagefolder data.root=/missing"),
    (["data=imagefolder", "data.root=/missing"], "does not exist: set data.root="),
])
def test_bad_input_is_one_line_nonzero_and_no_running_run(overrides, fragment, tracking_uri, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeqat", "train", *overrides, "tracking.experiment_name=bad"],
                          capture_output=True, text=True, env=_env(tracking_uri), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgeqat: error: ") and fragment in lines[0]
    assert all(r.info.status != "RUNNING" for r in _runs(tracking_uri, "bad"))


def _mlflow_run(overrides: str, tracking_uri: str, experiment: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
         "--experiment-name", experiment, "-P", f"overrides={overrides}"],
        capture_output=True, text=True, env=_env(tracking_uri), cwd=cwd, timeout=600,
    )


def test_mlflow_run_makes_exactly_one_run(tracking_uri: str, tmp_path: Path) -> None:
    proc = _mlflow_run(f"{TINY} output_dir={tmp_path}/outputs", tracking_uri, "e2e", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _runs(tracking_uri, "e2e")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "mobilenetv3_small_100"
    assert "data=digits" in run.data.params["overrides"]  # MLflow's own entry-point param (it keeps quotes)
    assert run.data.tags["edgeqat.overrides"].startswith("data=digits data.image_size=16")
    assert {"train/loss", "val/acc", "test/acc_fp32"} <= set(run.data.metrics)
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    client = MlflowClient(tracking_uri)
    assert "config/config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id, "config")}


def test_mlflow_run_with_bad_model_ends_failed(tracking_uri: str, tmp_path: Path) -> None:
    proc = _mlflow_run("model.name=resnet181", tracking_uri, "e2e-bad", tmp_path)
    assert proc.returncode != 0
    assert "Did you mean 'resnet18'" in proc.stderr
    runs = _runs(tracking_uri, "e2e-bad")
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "resnet181" in runs[0].data.tags["edgeqat.failure"]
