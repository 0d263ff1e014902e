"""Which experiment a new run lands in: an explicit override, then MLflow's variables, then the default."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from edgeqat.tracking.run import TrackingError, resolve_experiment


def _name(client: MlflowClient, exp_id: str) -> str:
    return client.get_experiment(exp_id).name


def test_mlflows_own_variables_count(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(tracking_uri)
    assert _name(client, resolve_experiment(client, None)) == "edgeqat"
    other = client.create_experiment("by-id")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", other)
    assert resolve_experiment(client, None) == other
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "by-name")  # the name wins over the id, as in MLflow
    assert _name(client, resolve_experiment(client, None)) == "by-name"
    assert _name(client, resolve_experiment(client, "explicit")) == "explicit"  # the override wins over both


def test_an_unknown_experiment_id_is_a_one_line_error(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "424242")
    with pytest.raises(TrackingError, match="MLFLOW_EXPERIMENT_ID=424242 is not an experiment.*tracking.experiment_name"):
        resolve_experiment(MlflowClient(tracking_uri), None)
