"""A training job against the real stack: artifacts land in SeaweedFS through the server's proxy.

The job gets the tracking URI only, never the S3 keys: whatever reaches the bucket went through
``mlflow server --serve-artifacts``. The demo test runs ``edgeqat demo`` as a newcomer would.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from edgeqat.stack.processes import http_status
from edgeqat.stack.s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, S3Credentials, make_s3_client
from edgeqat.stack.stack import ARTIFACTS_BUCKET, read_stack_env, stack_down, stack_status
from tests.fixtures.servers import S3Server

pytestmark = pytest.mark.integration

JOB = ["data=digits", "data.image_size=16", "model=resnet18", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
       "trainer.enable_progress_bar=false", "quant=fp32", "quant.benchmark_resolutions=[]", "quant.latency_iters=3"]
EXPECTED = {"config/config.yaml", "checkpoints/fp32/best.ckpt", "checkpoints/fp32/metadata.json",
            "data/class_distribution.json", "data/class_distribution.png", "fp32/model.onnx"}


def _clean_env(**extra: str) -> dict[str, str]:
    """Our environment without any tracking server, run or S3 keys, plus ``extra``."""
    drop = ("MLFLOW_", "AWS_", "EDGEQAT_ADMIN_PASSWORD")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bucket_objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` (relative key -> bytes)."""
    # Closed after use: an idle keep-alive connection holds up SeaweedFS's graceful stop.
    with closing(s3.client()) as client:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return {k[len(prefix):]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_run_artifacts_are_objects_in_seaweedfs_and_download_intact(
        seaweedfs: S3Server, mlflow_server_module, tmp_path: Path) -> None:
    server = mlflow_server_module(s3=seaweedfs)
    proc = subprocess.run(
        [sys.executable, "-m", "edgeqat", "train", *JOB, "tracking.experiment_name=stack",
         f"output_dir={tmp_path}/out"],
        env=_clean_env(**server.env()), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("stack").experiment_id])
    run_id, exp_id = run.info.run_id, run.info.experiment_id
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri == f"mlflow-artifacts:/{exp_id}/{run_id}/artifacts", "artifacts must be proxied"

    prefix = f"{server.artifacts_prefix}{exp_id}/{run_id}/artifacts/"
    objects = _bucket_objects(seaweedfs, ARTIFACTS_BUCKET, prefix)
    assert set(objects) >= EXPECTED, f"missing in s3://{ARTIFACTS_BUCKET}/{prefix}: {EXPECTED - set(objects)}"

    # What MLflow serves is what the bucket holds, byte for byte, and the checkpoint is the one trained.
    downloaded = Path(client.download_artifacts(run_id, "", str(tmp_path / "download")))
    served = {p.relative_to(downloaded).as_posix(): p.read_bytes() for p in downloaded.rglob("*") if p.is_file()}
    assert set(served) == set(objects)
    assert {k: _sha256(v) for k, v in served.items()} == {k: _sha256(v) for k, v in objects.items()}
    local_ckpt = tmp_path / "out" / run_id / "checkpoints" / "fp32" / "best.ckpt"
    assert _sha256(objects["checkpoints/fp32/best.ckpt"]) == _sha256(local_ckpt.read_bytes())


def _demo(home: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeqat", "demo", "--home", str(home), "--experiment-name", "demo", *args],
        env=_clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )


def test_demo_runs_one_tracked_job_and_says_where_the_models_are(tmp_path: Path) -> None:
    home = tmp_path / ".edgeqat"
    # INT8 and fast, but trained enough (3 full epochs) for the default target's gate (accuracy >= 0.5).
    ptq = [o for o in JOB if o not in ("quant=fp32", "trainer.max_epochs=1", "trainer.limit_train_batches=3")]
    ptq += ["quant=ptq_int8", "quant.calibration_batches=1", "trainer.max_epochs=3"]
    overrides = " ".join([*ptq, f"output_dir={tmp_path}/out"])
    try:
        proc = _demo(home, tmp_path, "--mlflow-port", "0", "--s3-port", "0", "--deploy-port", "0",
                     "--overrides", overrides)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout
        assert "SeaweedFS started" in out and "MLflow started" in out
        assert "Test metric" in out, "the job's output is streamed"
        ui = re.search(r"MLflow UI of the run: (http://127\.0\.0\.1:\d+)/#/experiments/(\d+)/runs/([0-9a-f]{32})", out)
        assert ui, out[-2000:]
        tracking_uri, exp_id, run_id = ui.groups()
        run = MlflowClient(tracking_uri).get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.experiment_id == exp_id
        assert http_status(tracking_uri) == 200, "--keep-stack is the default: the UI stays up"

        endpoint = read_stack_env(home)["MLFLOW_S3_ENDPOINT_URL"]
        with closing(make_s3_client(endpoint, S3Credentials(LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY))) as s3:
            for name in ("int8", "fp32"):  # the stack's documented local keys read its bucket
                assert f"{name.upper()} model: runs:/{run_id}/{name}/model.onnx" in out
                key = f"{exp_id}/{run_id}/artifacts/{name}/model.onnx"
                printed = re.search(rf"S3 object: s3://{ARTIFACTS_BUCKET}/{key} \(([\d,]+) bytes; "
                                    rf"{re.escape(endpoint)}/{ARTIFACTS_BUCKET}/{key}\)", out)
                assert printed, out[-2000:]
                head = s3.head_object(Bucket=ARTIFACTS_BUCKET, Key=key)
                assert head["ContentLength"] == int(printed.group(1).replace(",", ""))

        _check_the_deploy_half(home, tracking_uri, run_id, out)

        # Again on the running stack (reused, not restarted), with a job that fails, and --down.
        proc = _demo(home, tmp_path, "--overrides", "model.name=resnet181", "--down")
        assert proc.returncode != 0
        assert "SeaweedFS already running" in proc.stdout and "MLflow already running" in proc.stdout
        assert "Did you mean 'resnet18'" in proc.stdout
        new_run = rf"MLflow UI of the run: {tracking_uri}/#/experiments/{exp_id}/runs/(?!{run_id})[0-9a-f]{{32}}"
        assert re.search(new_run, proc.stdout), "a new run in the same experiment"
        assert "The run ended FAILED" in proc.stdout  # read from the server before it was stopped
        assert stack_status(home).exit_code == 3, "--down stops the stack"
        assert not (home / "run" / "deploy.json").exists(), "--down stops the deploy controller too"
    finally:
        stack_down(home, echo=lambda _: None)


def _check_the_deploy_half(home: Path, tracking_uri: str, run_id: str, out: str) -> None:
    """The run's version promoted, gated, published and running on the local agent, with predictions."""
    client = MlflowClient(tracking_uri)
    name, version = client.get_run(run_id).data.tags["edgeqat.model_version"].rsplit("/", 1)
    assert f"Registered model: {tracking_uri}/#/models/{name}/versions/{version}" in out, out[-2000:]
    assert re.search(rf"Agent runs {re.escape(name)} v{version} \(\d+\.\d s after the promotion\)", out)
    predictions = re.findall(r"^    (\S+\.png)\t(\S+)\t([\d.]+)   \(true: (\S+)\)$", out, re.MULTILINE)
    assert len(predictions) == 4, out[-2000:]
    assert client.get_model_version(name, version).tags["deploy.local.status"] == "deployed"
    assert client.get_model_version_by_alias(name, "production").version == version
    hooks = [w for w in client.list_webhooks() if w.name == "edgeqat-deploy"]
    assert len(hooks) == 1 and hooks[0].url.endswith("/webhook")
    secret_file = home / "secrets" / "webhook_secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip()
    for log in (home / "logs").glob("*.log"):
        assert secret not in log.read_text(errors="replace"), f"the webhook secret leaked into {log}"
    assert secret not in out
