"""Registered versions: create one per run (never twice), find a run's version again."""

from __future__ import annotations

import json
from typing import Any

MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # what mlflow.register_model writes on the LoggedModel


def find_run_version(client: Any, name: str, run_id: str) -> Any | None:
    """The version of ``name`` registered from ``run_id`` (the newest, should there be several)."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def register_version(client: Any, name: str, model_id: str, run_id: str, tags: dict[str, str]) -> Any:
    """A version of ``name`` whose source is the LoggedModel ``models:/<model_id>``, tagged with ``tags``.

    Creates the registered model on first use. Linked both ways as ``mlflow.register_model`` does:
    the version names its ``model_id``, the LoggedModel lists its versions.
    """
    from mlflow.exceptions import MlflowException

    existing = find_run_version(client, name, run_id)
    if existing is not None and existing.tags.get("sha256") == tags.get("sha256"):
        return existing
    try:
        client.create_registered_model(name, description="INT8 ONNX models registered by edgeqat runs")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, tags=tags,
                                          model_id=model_id)
    logged = client.get_logged_model(model_id)
    links = json.loads(logged.tags.get(MODEL_VERSIONS_TAG, "[]"))
    links.append({"name": name, "version": version.version})
    client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(links)})
    return version
