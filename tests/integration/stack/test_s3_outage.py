"""S3 goes away under a running job: uploads are retried, then spooled; ``edgeqat sync`` finishes the run.

The artifact store fails, not the tracking server: metrics and tags still reach MLflow, but each
artifact upload through the server's proxy gets HTTP 500. This test owns its SeaweedFS (the
session's is shared by other tests) and stops it with the job paused (SIGSTOP), so the outage
begins between two known uploads rather than wherever a race puts it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from edgeqat.stack.seaweed import DEFAULT_BUCKETS
from tests.fixtures.servers import OwnSeaweed, S3Server

pytestmark = pytest.mark.integration

JOB = ["data=digits", "data.image_size=16", "model=resnet18", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
       "trainer.enable_progress_bar=false", "quant=fp32", "quant.benchmark_resolutions=[]", "quant.latency_iters=3",
       "tracking.experiment_name=s3-outage", "tracking.close_timeout_s=8"]
CKPT = "checkpoints/fp32/best.ckpt"


def _keys(s3: S3Server, prefix: str) -> set[str]:
    with closing(s3.client()) as client:  # an idle keep-alive connection would hold up SeaweedFS's stop
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=DEFAULT_BUCKETS[0], Prefix=prefix)
        return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def _wait_for_first_upload(client: MlflowClient, s3: S3Server, server_prefix: str,
                           proc: subprocess.Popen) -> tuple[str, str]:
    """The run once its config is in the bucket (the first artifact a job uploads)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("s3-outage")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs:
            run_id = runs[0].info.run_id
            prefix = f"{server_prefix}{exp.experiment_id}/{run_id}/artifacts/"
            if "config/config.yaml" in _keys(s3, prefix):
                return run_id, prefix
        time.sleep(0.1)
    raise AssertionError(f"the job uploaded no config before it ended (exit {proc.poll()})")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_s3_down_during_uploads_spools_then_sync_finishes_the_run(own_s3: OwnSeaweed, mlflow_server,
                                                                   tmp_path: Path) -> None:
    server = mlflow_server(s3=own_s3.server)
    client = MlflowClient(server.url)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}, **server.env(),
           # One HTTP attempt per upload: every retry seen in the server log is then the job's own.
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    out, err = (tmp_path / "job.out").open("w"), (tmp_path / "job.err").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "edgeqat", "train", *JOB, f"output_dir={tmp_path}/out"],
                            env=env, cwd=tmp_path, stdout=out, stderr=err)
    try:
        run_id, prefix = _wait_for_first_upload(client, own_s3.server, server.artifacts_prefix, proc)
        os.kill(proc.pid, signal.SIGSTOP)  # the outage starts between two uploads, not wherever a race puts it
        own_s3.stop()
        os.kill(proc.pid, signal.SIGCONT)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
        err.close()
    stderr = (tmp_path / "job.err").read_text()

    # The job ends 3 and names the way out; nothing is lost locally.
    spool = tmp_path / "out" / "spool" / run_id
    assert rc == 3, stderr[-3000:]
    assert f"edgeqat sync {spool}" in stderr
    ops = [json.loads(line) for line in (spool / "ops.jsonl").read_text().splitlines()]
    spooled_ckpt = [spool / op["path"] for op in ops if op["op"] == "artifact"
                    and op["artifact_path"] == "checkpoints/fp32" and op["path"].endswith("best.ckpt")]
    assert len(spooled_ckpt) == 1 and spooled_ckpt[0].is_file()
    local_ckpt = tmp_path / "out" / run_id / CKPT
    assert _sha256(spooled_ckpt[0]) == _sha256(local_ckpt)
    assert ops[-1] == {"op": "terminate", "status": "FINISHED"}

    # The job retried: the upload at the head of its queue reached the server (HTTP 500) more than once.
    failed = Counter(m.group(1) for m in re.finditer(r'"((?:PUT|GET) /api/2\.0/mlflow-artifacts/\S+) HTTP/1\.1" 500',
                                                      server.log_path.read_text()))
    assert failed and max(failed.values()) >= 2, f"no artifact request was retried: {failed}"
    # ... and did not call the run FINISHED while its artifacts are missing.
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["edgeqat.status"] == "RUNNING"

    own_s3.start()  # "later": same ports and data; what was uploaded before the outage is still there
    before_sync = _keys(own_s3.server, prefix)
    assert "config/config.yaml" in before_sync and CKPT not in before_sync
    sync = subprocess.run([sys.executable, "-m", "edgeqat", "sync", str(spool)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stderr[-2000:]

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["edgeqat.status"] == "FINISHED"
    assert "test/acc_fp32" in run.data.metrics, "metrics queued behind the failed upload arrive too"
    uploaded = {op.get("artifact_path") or "" for op in ops if op["op"] == "artifact"}
    after_sync = _keys(own_s3.server, prefix)
    assert {CKPT, "fp32/model.onnx", "config/config.yaml"} <= after_sync
    assert all(any(k.startswith(f"{d}/") for k in after_sync) for d in uploaded if d)
    ckpt = client.download_artifacts(run_id, CKPT, str(tmp_path / "download"))
    assert _sha256(Path(ckpt)) == _sha256(local_ckpt)
