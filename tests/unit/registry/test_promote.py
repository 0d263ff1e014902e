"""Promotion both ways, read back the way the controller reads it; bad names are one-line errors."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from edgeqat.registry import LoggedModelSpec, PromoteError, promote, resolve_version
from edgeqat.registry.versions import register_version


@pytest.fixture
def registered(tracking_uri: str, spec: LoggedModelSpec) -> MlflowClient:
    from edgeqat.registry import apply_logged_model

    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("promote")).info.run_id
    op = spec.to_op()
    apply_logged_model(client, run_id, op)
    register_version(client, "tiny-digits-int8", op["model_id"], run_id, {"sha256": "other"})  # version 2
    return client


def test_alias_and_stage_are_what_the_controller_resolves(registered: MlflowClient) -> None:
    name = "tiny-digits-int8"
    assert resolve_version(registered, name, alias="production") is None
    promote(registered, name, 2, alias="production")
    assert str(resolve_version(registered, name, alias="production").version) == "2"
    promote(registered, name, "1", alias="production")  # moving it back
    assert str(resolve_version(registered, name, alias="production").version) == "1"
    assert resolve_version(registered, name, stage="Production") is None
    assert promote(registered, name, 2, stage="production").current_stage == "Production"  # any case
    assert str(resolve_version(registered, name, stage="Production").version) == "2"
    assert resolve_version(registered, "no-such-model", alias="production") is None


@pytest.mark.parametrize("kwargs, message", [
    ({"version": 9, "alias": "production"}, "No version 9"),
    ({"version": 1, "alias": "latest"}, "reserved"),
    ({"version": 1, "alias": "v3"}, "reserved"),
    ({"version": 1, "stage": "Prod"}, "choose one of None, Staging, Production, Archived"),
    ({"version": 1}, "exactly one"),
    ({"version": 1, "alias": "a", "stage": "Staging"}, "exactly one"),
])
def test_bad_promotions_name_the_fix(registered: MlflowClient, kwargs: dict, message: str) -> None:
    with pytest.raises(PromoteError, match=message):
        promote(registered, "tiny-digits-int8", **kwargs)
