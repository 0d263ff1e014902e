"""LoggedModel + registration as one recorder op: complete, linked, and resumable after a failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from edgeqat.registry import LoggedModelSpec, apply_logged_model, find_run_version, sha256_file
from edgeqat.tracking.spool import apply_op, sync_spool, write_spool
from tests.unit.registry.conftest import PRE

class FlakyClient:
    """An MlflowClient whose ``fail_on`` method raises a transient error the first time it is called."""

    def __init__(self, client: MlflowClient, fail_on: str) -> None:
        self._client, self._fail_on, self.failed = client, fail_on, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == self._fail_on and not self.failed:
            def fail(*args: Any, **kwargs: Any) -> Any:
                self.failed = True
                attr(*args, **kwargs)  # the server did it, but the answer is lost
                raise ConnectionError("Connection aborted (test)")
            return fail
        return attr


def _run(client: MlflowClient) -> str:
    return client.create_run(client.create_experiment("reg")).info.run_id


def test_logged_model_is_complete_and_registered(tracking_uri: str, spec: LoggedModelSpec) -> None:
    import mlflow

    client = MlflowClient(tracking_uri)
    run_id = _run(client)
    op = spec.to_op()
    apply_op(client, run_id, op)
    run = client.get_run(run_id)
    assert len(run.outputs.model_outputs) == 1
    model = client.get_logged_model(op["model_id"])
    assert model.status == LoggedModelStatus.READY and model.source_run_id == run_id
    mv = find_run_version(client, "tiny-digits-int8", run_id)
    assert mv is not None and mv.source == f"models:/{op['model_id']}" and mv.tags["acc_int8"] == "0.9"
    assert run.data.tags["edgeqat.model_version"] == f"tiny-digits-int8/{mv.version}"
    local = Path(mlflow.artifacts.download_artifacts(mv.source, tracking_uri=tracking_uri))
    assert sha256_file(local / "model.onnx") == mv.tags["sha256"]  # the bytes the run logged, not MLflow's re-save
    info = mlflow.models.get_model_info(str(local))
    assert info.metadata["edgeqat"]["preprocessing"] == PRE
    assert info.signature.inputs.inputs[0].shape == (-1, 1, -1, -1)
    assert (local / "input_example.json").exists()


@pytest.mark.parametrize("fail_on", ["create_logged_model", "log_model_artifacts", "log_outputs",
                                     "create_model_version"])
def test_a_retry_after_a_lost_answer_creates_nothing_twice(tracking_uri: str, spec: LoggedModelSpec,
                                                           fail_on: str) -> None:
    client = MlflowClient(tracking_uri)
    run_id = _run(client)
    flaky, op = FlakyClient(client, fail_on), spec.to_op()
    with pytest.raises(ConnectionError):
        apply_logged_model(flaky, run_id, op)
    assert flaky.failed
    apply_logged_model(flaky, run_id, op)  # what the recorder does: the same op again
    experiment_id = client.get_run(run_id).info.experiment_id
    assert len(client.search_logged_models([experiment_id])) == 1
    assert len(client.search_model_versions("name = 'tiny-digits-int8'")) == 1
    assert len(client.get_run(run_id).outputs.model_outputs) == 1


def test_spooled_registration_is_replayed_by_sync(tracking_uri: str, spec: LoggedModelSpec, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri)
    run_id = _run(client)
    spool = write_spool(tmp_path / "spool" / run_id, tracking_uri, run_id, [spec.to_op()])
    for name in ("model.onnx", "example.npy"):
        (tmp_path / name).unlink()  # the spool holds its own copies
    assert sync_spool(spool).uploaded == 1
    assert find_run_version(client, "tiny-digits-int8", run_id) is not None
