"""Secrets a job holds never reach its run: params, tags, metric keys, inputs and artifacts.

The job runs against an auth-enabled server with S3 artifacts and holds the S3 secret key and the
MLflow admin password in its environment (as a real job would). Everything the run holds is then
read back through the MLflow API, artifacts downloaded, and searched for both secrets; a failure
names each place a secret was found (``S3 secret key in tag note``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.fixtures.servers import MlflowServer, S3Server

pytestmark = pytest.mark.integration

JOB = ["data=digits", "data.image_size=16", "model=resnet18", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
       "trainer.enable_progress_bar=false", "quant=fp32", "quant.benchmark_resolutions=[]", "quant.latency_iters=3",
       "tracking.experiment_name=secrets"]


def _client(server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin_username)  # where the client reads its login
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
    return MlflowClient(server.url)


def _train(client: MlflowClient, server: MlflowServer, s3: S3Server, tmp_path: Path, name: str,
           *overrides: str) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}, **s3.env(),
           **server.env(), "EDGEQAT_ADMIN_PASSWORD": server.admin_password}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeqat", "train", *JOB, f"tracking.run_name={name}", *overrides,
         f"output_dir={tmp_path}/out"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = client.get_experiment_by_name("secrets")
    (run,) = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
    assert run.info.status == "FINISHED"
    return run.info.run_id


def _everything_the_run_holds(client: MlflowClient, run_id: str, download_to: Path) -> dict[str, bytes]:
    """``where -> content`` for every param, tag, metric key, dataset input and (downloaded) artifact file."""
    run = client.get_run(run_id)
    found: dict[str, bytes] = {"run name": (run.info.run_name or "").encode()}
    found.update({f"param {k}": f"{k}={v}".encode() for k, v in run.data.params.items()})
    found.update({f"tag {k}": f"{k}={v}".encode() for k, v in run.data.tags.items()})
    found.update({f"metric {k}": k.encode() for k in run.data.metrics})
    for i, ds in enumerate(run.inputs.dataset_inputs if run.inputs else []):
        found[f"input {i}"] = f"{ds.dataset.name} {ds.dataset.source} {ds.dataset.digest}".encode()
    root = Path(client.download_artifacts(run_id, "", str(download_to)))
    found.update({f"artifact {p.relative_to(root)}": p.read_bytes() for p in root.rglob("*") if p.is_file()})
    return found


def _leaks(found: dict[str, bytes], secrets: dict[str, str]) -> list[str]:
    return [f"{name} in {where}" for where, data in found.items() for name, value in secrets.items()
            if value.encode() in data]


def test_secrets_never_reach_the_run(seaweedfs: S3Server, mlflow_server, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The job holds both secrets in its environment, and a user has also pasted them into run tags.

    The environment alone must never leak. The pasted copies are what ``scrub_secrets`` exists for
    (its rule 3: a secret variable's value is masked wherever it appears, even under an innocent key),
    so they must not reach params, ``config.yaml`` or the run's tags either.
    """
    server = mlflow_server(s3=seaweedfs, auth=True)
    client = _client(server, monkeypatch)
    run_id = _train(client, server, seaweedfs, tmp_path, "secrets",
                    "+tracking.tags.note=${oc.env:AWS_SECRET_ACCESS_KEY}",
                    "+tracking.tags.login=${oc.env:MLFLOW_TRACKING_PASSWORD}")
    found = _everything_the_run_holds(client, run_id, tmp_path / "download")
    # The search covers what matters: checkpoints, the logged config, and the pasted values themselves.
    assert {"artifact checkpoints/fp32/best.ckpt", "artifact config/config.yaml", "tag note",
            "param tracking.tags.note"} <= set(found)
    secrets = {"S3 secret key": seaweedfs.credentials.secret_key, "admin password": server.admin_password}
    assert _leaks(found, secrets) == []
