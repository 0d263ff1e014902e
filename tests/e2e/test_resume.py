"""A job killed with SIGKILL (no handler runs) resumes with ``edgeqat train resume=<run_id>``.

The second attempt runs in another output folder, as on another machine: what it continues from
is what the first attempt put in the run. What the client sent is counted on the wire
(``CountingProxy``), because the server silently drops a resent identical point.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from edgeqat.callbacks.resume_checkpoint import RESUME_TAG
from edgeqat.pipeline.resume import RESUMED_TAG
from tests.fixtures.counting_proxy import CountingProxy
from tests.fixtures.servers import MlflowServerFactory

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

EPOCHS = 3  # FP32, then as many QAT
JOB = ["data=digits", "data.image_size=16", "model=resnet18", "model.name=test_resnet", "quant=qat_int8",
       f"trainer.max_epochs={EPOCHS}", f"quant.qat_epochs={EPOCHS}", "trainer.log_every_n_steps=1",
       "quant.benchmark_resolutions=[]", "quant.latency_iters=5", "trainer.enable_progress_bar=false",
       "tracking.checkpoint_interval_s=0", "tracking.batch_window_s=0.2", "registry.register=false"]
STEPS_PER_EPOCH = math.ceil(int(1797 * 0.7) / 64)  # digits' train split, batch 64


def _env(url: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": url}


@pytest.mark.parametrize("phase", ["fp32", "qat"])
def test_sigkill_then_resume_finishes_the_same_run_logging_each_step_once(
        phase: str, mlflow_server: MlflowServerFactory, tmp_path: Path) -> None:
    server = mlflow_server()
    client = MlflowClient(server.url)
    experiment = f"resume-{phase}"
    with CountingProxy(server.url) as proxy:
        first = subprocess.Popen([sys.executable, "-m", "edgeqat", "train", *JOB,
                                  f"tracking.experiment_name={experiment}", f"output_dir={tmp_path}/first"],
                                 env=_env(proxy.url), cwd=tmp_path, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            run_id = _wait_for_upload(client, experiment, phase, first)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # no handler, no flush, no status
            first.wait(timeout=60)
        assert client.get_run(run_id).info.status == "RUNNING"
        sent_first = len(proxy.sent)

        second = subprocess.run([sys.executable, "-m", "edgeqat", "train", f"resume={run_id}",
                                 f"output_dir={tmp_path}/second"], env=_env(proxy.url), cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1
    # from the uploaded checkpoint of the phase it was in: the second folder had nothing local
    assert run.data.tags[RESUMED_TAG].startswith(f"{phase}: run artifacts checkpoint after step")
    assert f"checkpoints/{phase}/last.ckpt" in second.stderr  # Lightning: "Restoring states from ..."
    fp32_again = (tmp_path / "second" / run_id / "checkpoints" / "fp32" / "last.ckpt").exists()
    assert fp32_again == (phase == "fp32")  # killed in QAT: the FP32 fit is not run again
    # each point sent once over both attempts, counted on the wire
    repeated = [p for p, n in collections.Counter((k, s) for k, s, _, _ in proxy.sent).items() if n > 1]
    assert not repeated, repeated[:10]
    assert 0 < sent_first < len(proxy.sent)
    # and nothing missing: every step of both phases, every epoch's validation, the final figures
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(2 * EPOCHS * STEPS_PER_EPOCH))
    assert len(client.get_metric_history(run_id, "val/acc")) == 2 * EPOCHS
    assert {"test/acc_fp32", "test/acc_qat", "test/acc_int8", "int8/top1_agreement"} <= set(run.data.metrics)


def _wait_for_upload(client: MlflowClient, experiment: str, phase: str, job: subprocess.Popen,
                     timeout_s: float = 300.0) -> str:
    """The run id, once a full-state checkpoint of ``phase`` is in the run (then the test kills the job)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert job.poll() is None, job.stderr.read()[-3000:]
        exp = client.get_experiment_by_name(experiment)
        for run in client.search_runs([exp.experiment_id]) if exp else []:
            if run.data.tags.get(RESUME_TAG, "").startswith(f"{phase}/"):
                return run.info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no {phase} checkpoint was uploaded within {timeout_s:.0f} s")
