"""RunRecorder against a real SQLite store, with the outage injected between it and the store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from edgeqat.cli import main as cli_main
from edgeqat.tracking import RunRecorder, sync_spool
from edgeqat.tracking.spool import is_transient


class Outage:
    """Wraps a real client; while ``down`` every call fails like an unreachable server."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.down, self.calls = client, threading.Event(), 0

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    def __getattr__(self, name: str):
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            self.calls += 1
            if self.down.is_set():
                raise requests.exceptions.ConnectionError("Connection refused")
            return method(*args, **kwargs)

        return call


@pytest.fixture
def run(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("recorder")
    return client, client.create_run(exp).info.run_id


def _recorder(client, run_id: str, tmp_path: Path) -> RunRecorder:
    return RunRecorder(client, run_id, tmp_path / "staged", tmp_path / "spool", max_backoff_s=0.2)


def test_outage_keeps_order_and_sends_every_point_once(run, tmp_path: Path) -> None:
    client, run_id = run
    flaky = Outage(client)
    rec = _recorder(flaky, run_id, tmp_path)
    for step in range(5):
        rec.log_metrics({"loss": float(step)}, step=step)
    assert rec.flush(10)
    flaky.down.set()
    for step in range(5, 40):
        rec.log_metrics({"loss": float(step)}, step=step)
        rec.set_tags({"edgeqat.progress": str(step)})
    rec.log_text("hello", "notes/hello.txt")
    assert not rec.flush(1.0) and rec.pending > 0  # held, not dropped
    flaky.down.clear()
    assert rec.flush(20)
    assert rec.close(5) is None
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(40))  # none lost, none twice
    assert client.get_run(run_id).data.tags["edgeqat.progress"] == "39"  # last write wins: order kept
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/hello.txt"]


def test_never_back_spools_then_sync_uploads_once(run, tmp_path: Path) -> None:
    client, run_id = run
    flaky = Outage(client)
    flaky.down.set()
    rec = _recorder(flaky, run_id, tmp_path)
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"\x00\x01" * 100)
    for step in range(25):
        rec.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    rec.log_params({"lr": 0.1})
    rec.log_artifact(artifact, "weights")
    artifact.unlink()  # the recorder staged its own copy at log time
    rec.log_figure(_figure(), "plots/bars.png")  # queued unrendered; the spool gets its PNG
    rec.terminate("FINISHED")
    spool = rec.close(timeout_s=1.0)
    assert spool is not None and (spool / "ops.jsonl").exists()
    assert client.get_metric_history(run_id, "loss") == []

    assert cli_main(["sync", str(spool)]) == 0
    assert len(client.get_metric_history(run_id, "loss")) == 25
    got = client.get_run(run_id)
    assert got.data.params == {"lr": "0.1"} and got.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "weights")] == ["weights/model.bin"]
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/bars.png"]
    again = sync_spool(spool)  # resumes after the last uploaded operation: nothing twice
    assert again.uploaded == 0 and len(client.get_metric_history(run_id, "loss")) == 25


def test_metrics_wait_for_company_then_leave_in_one_request(run, tmp_path: Path) -> None:
    client, run_id = run
    counting = Outage(client)
    rec = RunRecorder(counting, run_id, tmp_path / "staged", tmp_path / "spool", batch_window_s=30.0)
    for step in range(20):  # a training loop logging every step
        rec.log_metrics({"loss": float(step)}, step=step)
        rec.set_tags({"edgeqat.progress": str(step)})
    assert counting.calls == 0 and rec.pending == 40  # held back by the window, not sent one by one
    assert rec.flush(10)  # flush ends the window at once, far before its 30 s
    assert counting.calls == 1 and rec.sent_ops == 40  # 20 points + 20 tag writes, one log_batch
    assert [m.step for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)] == list(range(20))

    calls = counting.calls
    rec.log_metrics({"loss": 99.0}, step=99)
    rec.log_text("done", "notes/done.txt")  # any other kind of op ends the window too
    deadline = time.monotonic() + 10
    while rec.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rec.pending == 0 and counting.calls == calls + 2
    assert rec.close(5) is None


def _figure():
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().bar(["a", "b"], [3, 1])
    return fig


def test_figures_render_on_the_sender_thread(run, tmp_path: Path, monkeypatch) -> None:
    client, run_id = run
    rendered_on = []
    fig = _figure()
    real_savefig = fig.savefig
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (rendered_on.append(threading.current_thread().name),
                                                          real_savefig(*a, **k)))
    rec = _recorder(client, run_id, tmp_path)
    rec.log_figure(fig, "data/bars.png")
    assert rec.close(10) is None
    assert rendered_on == ["edgeqat-recorder"]  # not the training thread
    (artifact,) = client.list_artifacts(run_id, "data")
    assert artifact.path == "data/bars.png" and artifact.file_size > 1000


def test_rejected_operation_is_reported_not_retried(run, tmp_path: Path) -> None:
    client, run_id = run
    rec = _recorder(client, run_id, tmp_path)
    rec.log_params({"lr": 0.1})
    rec.log_params({"lr": 0.2})  # MLflow refuses to change a param
    rec.log_metrics({"after": 1.0})
    assert rec.close(10) is None
    assert len(rec.rejected) == 1 and rec.rejected[0][0]["params"] == {"lr": "0.2"}
    assert client.get_run(run_id).data.metrics == {"after": 1.0}


def test_sync_refuses_a_directory_that_is_not_a_spool(tmp_path: Path, capsys) -> None:
    assert cli_main(["sync", str(tmp_path)]) == 2
    assert "is not an edgeqat spool" in capsys.readouterr().err


@pytest.mark.parametrize(("exc", "transient"), [
    (requests.exceptions.ConnectionError("refused"), True),
    (MlflowException("API request failed: Max retries exceeded with url"), True),
    (MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE), False),
    (MlflowException("Internal server error", error_code=TEMPORARILY_UNAVAILABLE), True),
])
def test_transient_classification(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient
