"""The shared server fixtures: S3 artifacts through the MLflow proxy, stop/start mid-run, auth."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgeqat.stack.processes import http_status
from tests.fixtures.servers import MlflowServer, MlflowServerFactory, S3Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_mlflow(mlflow_server_module: MlflowServerFactory, seaweedfs: S3Server) -> MlflowServer:
    return mlflow_server_module(s3=seaweedfs)


@pytest.fixture
def client_env(s3_mlflow: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)  # the client needs no S3 keys: the server proxies
    for name, value in s3_mlflow.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return s3_mlflow.url


def test_artifacts_land_in_the_bucket_and_come_back_intact(client_env: str, s3_mlflow: MlflowServer,
                                                           seaweedfs: S3Server, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    # Small thresholds so the 11 MB file takes the multipart path (presigned part uploads to S3).
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(6 * 1024**2))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(5 * 1024**2))
    client = MlflowClient(client_env)
    run = client.create_run(client.create_experiment("fixture-artifacts"))
    small, large = tmp_path / "metrics.json", tmp_path / "model.onnx"
    small.write_text('{"val/acc": 0.9}')
    large.write_bytes(os.urandom(11 * 1024**2))
    client.log_artifact(run.info.run_id, str(small))
    client.log_artifact(run.info.run_id, str(large), "int8")

    listed = seaweedfs.client().list_objects_v2(Bucket="edgeqat-artifacts", Prefix=s3_mlflow.artifacts_prefix)
    objects = {o["Key"].rsplit("/artifacts/", 1)[-1]: o for o in listed["Contents"]}
    assert set(objects) == {"metrics.json", "int8/model.onnx"}
    assert objects["int8/model.onnx"]["ETag"].strip('"').endswith("-3"), "expected a 3-part multipart upload"
    for rel, local in (("metrics.json", small), ("int8/model.onnx", large)):
        got = Path(client.download_artifacts(run.info.run_id, rel, str(tmp_path / "dl")))
        assert hashlib.sha256(got.read_bytes()).hexdigest() == hashlib.sha256(local.read_bytes()).hexdigest()


def test_server_stopped_mid_run_comes_back_on_the_same_port_with_its_data(client_env: str,
                                                                          s3_mlflow: MlflowServer) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(client_env)
    run_id = client.create_run(client.create_experiment("fixture-restart")).info.run_id
    client.log_metric(run_id, "train/loss", 1.0, step=0)

    s3_mlflow.stop()
    assert not s3_mlflow.running
    assert http_status(f"{s3_mlflow.url}/health") is None
    with pytest.raises(MlflowException, match="failed with exception"):
        client.log_metric(run_id, "train/loss", 0.5, step=1)

    s3_mlflow.start()
    assert s3_mlflow.url == client_env
    client.log_metric(run_id, "train/loss", 0.25, step=2)
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (2, 0.25)]


def test_auth_server_fixture(mlflow_server: MlflowServerFactory) -> None:
    server = mlflow_server(auth=True)
    url = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(url) == 401
    assert http_status(url, auth=(server.admin_username, server.admin_password or "")) == 200
    assert server.env()["MLFLOW_TRACKING_PASSWORD"] == server.admin_password
    assert server.admin_password not in (server.root / "basic_auth.ini").read_text()
