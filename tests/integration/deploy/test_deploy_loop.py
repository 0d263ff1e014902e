"""The registry drives deployment, end to end on the real stack (SeaweedFS, ``mlflow server``, the
controller and an agent as processes, the agent with torch/mlflow/... unimportable).

The tests share one setup and run in file order, as one story: train two versions; promote v1 by
alias (webhook) -> gated, published, running on the agent; forged deliveries change nothing; a bad
version is rejected and the agent keeps v1; v2 ships; moving the alias back rolls back; with the
controller down the alias moves and the poller catches up after the restart; a legacy stage
transition deploys too.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from edgeqat.config import compose_config
from edgeqat.registry import LoggedModelSpec, apply_logged_model, sha256_file
from edgeqat.stack.seaweed import DEFAULT_BUCKETS
from edgeqat.train import train
from tests.integration.deploy.conftest import TINY_QAT, Loop, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]
MODEL = "loop-digits-int8"


@pytest.fixture(scope="module")
def versions(loop: Loop, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two trained versions (different seeds, so different files) and a broken third one."""
    out: dict[str, Any] = {}
    for seed in (1, 2):
        cfg = compose_config([*TINY_QAT, f"seed={seed}", f"tracking.tracking_uri={loop.tracking_uri}",
                              f"registry.model_name={MODEL}",
                              f"output_dir={tmp_path_factory.mktemp(f'train{seed}')}"])
        result = train(cfg)
        assert result.model_version is not None
        out[result.model_version.split("/")[1]] = result
    out["bad"] = _register_scrambled(loop, out["1"].run_id, tmp_path_factory.mktemp("bad"))
    return out


def _register_scrambled(loop: Loop, run_id: str, where: Path) -> str:
    """v1's file with its classifier weights shuffled: a real INT8 file that classifies at chance."""
    import mlflow.artifacts
    import onnx
    from onnx import numpy_helper

    from edgeqat.deploy.gate import Candidate, fetch_model

    client = loop.client
    v1 = client.get_model_version(MODEL, "1")
    model_path, _ = fetch_model(loop.tracking_uri, Candidate.from_model_version(v1), where)
    local = model_path.parent
    model = onnx.load(str(model_path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 2:  # the FC weight (int8): permute its rows -> wrong classes
            init.CopyFrom(numpy_helper.from_array(w[rng.permutation(len(w))].copy(), init.name))
    path = where / "scrambled.onnx"
    onnx.save(model, str(path))
    example = where / "example.npy"
    np.save(example, np.zeros((1, 1, 16, 16), np.float32))
    run = client.create_run(client.get_run(run_id).info.experiment_id, run_name="scrambled")
    meta = yaml.safe_load((local / "MLmodel").read_text())["metadata"]
    op = LoggedModelSpec(name="int8", path=str(path), example=str(example), metadata=meta, register_as=MODEL,
                         version_tags={**v1.tags, "sha256": sha256_file(path), "run_id": run.info.run_id}).to_op()
    # The gate rebuilds the evaluation split from the run's logged config: log v1's there too.
    config = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/config/config.yaml", tracking_uri=loop.tracking_uri)
    client.log_artifact(run.info.run_id, config, "config")
    apply_logged_model(client, run.info.run_id, op)
    client.set_terminated(run.info.run_id)
    return op["version"]


def _published(loop: Loop, seaweedfs: Any) -> tuple[dict[str, Any], set[str]]:
    """The target's manifest payload and every key under its location."""
    bucket, prefix = DEFAULT_BUCKETS[0], loop.publish.split(f"{DEFAULT_BUCKETS[0]}/", 1)[1]
    with closing(seaweedfs.client()) as s3:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}manifest.json")["Body"].read())
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return manifest["payload"], {o["Key"][len(prefix):] for o in listing}


def _manifest(loop: Loop, seaweedfs: Any) -> dict[str, Any]:
    return _published(loop, seaweedfs)[0]


def _tags(loop: Loop, version: str) -> dict[str, str]:
    return loop.client.get_model_version(MODEL, version).tags


def _own_tags(mv: Any) -> dict[str, str]:
    """A version's tags without the controller's verdicts (a copy is a version not judged yet)."""
    return {k: v for k, v in mv.tags.items() if not k.startswith("deploy.")}


def _status(loop: Loop, version: str) -> str | None:
    return _tags(loop, version).get(f"deploy.{loop.target}.status")


def test_a_run_registers_its_int8_model_with_its_figures(loop: Loop, versions: dict[str, Any]) -> None:
    client = loop.client
    mv = client.get_model_version(MODEL, "1")
    for tag in ("acc_int8", "acc_fp32", "acc_drop", "latency_ms", "speedup", "latency_cpu", "latency_isa",
                "size_mb", "sha256", "run_id", "git_commit", "quant_recipe"):
        assert mv.tags.get(tag), tag
    assert mv.run_id == versions["1"].run_id and mv.source.startswith("models:/m-")
    outputs = client.get_run(mv.run_id).outputs.model_outputs
    names = {client.get_logged_model(o.model_id).name for o in outputs}
    assert names == {"int8", "fp32"}  # the run page's "Logged models"


def test_promotion_by_alias_reaches_the_agent_through_the_webhook(loop: Loop, versions: dict[str, Any],
                                                                  seaweedfs: Any) -> None:
    import subprocess
    import sys

    loop.start_controller(poll_interval_s=3600)  # no polling: only a webhook can trigger this deployment
    loop.start_agent()
    out = subprocess.run([sys.executable, "-m", "edgeqat", "promote", MODEL, "1", "--alias", "production",
                          "--tracking-uri", loop.tracking_uri], env=loop.env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    wait_for("the agent to run v1", lambda: loop.agent_version() == "1", 120)
    wait_for("the verdict on v1", lambda: _status(loop, "1") == "deployed", 30)  # written after publishing
    tags = _tags(loop, "1")
    assert float(tags[f"deploy.{loop.target}.acc"]) >= 0.5 and tags[f"deploy.{loop.target}.isa"]
    assert float(tags[f"deploy.{loop.target}.latency_p95_ms"]) > 0
    manifest = _manifest(loop, seaweedfs)
    assert manifest["version"] == "1" and manifest["sha256"] == tags["sha256"]
    runs = loop.client.search_runs([loop.client.get_experiment_by_name("edgeqat-deployments").experiment_id])
    assert any(r.data.tags.get("deploy.status") == "deployed" for r in runs)


@pytest.mark.parametrize("forgery", ["wrong", "missing", "stale"])
def test_forged_deliveries_get_401_and_change_nothing(loop: Loop, versions: dict[str, Any], forgery: str) -> None:
    from edgeqat.deploy.webhook import sign

    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": MODEL, "alias": "production", "version": "2"}}).encode()
    stamp = str(int(time.time()) - (1000 if forgery == "stale" else 0))
    headers = {"X-MLflow-Delivery-Id": str(uuid.uuid4()), "X-MLflow-Timestamp": stamp}
    if forgery != "missing":
        secret = "not-the-secret" if forgery == "wrong" else loop.secret
        headers["X-MLflow-Signature"] = sign(secret, headers["X-MLflow-Delivery-Id"], stamp, body)
    r = requests.post(f"{loop.url}/webhook", data=body, headers=headers, timeout=10)
    assert r.status_code == 401
    time.sleep(1.0)
    assert _status(loop, "2") is None and loop.agent_version() == "1"


def test_the_same_delivery_twice_is_processed_once(loop: Loop, versions: dict[str, Any]) -> None:
    from edgeqat.deploy.webhook import sign

    body = json.dumps({"entity": "model_version_tag", "action": "set",
                       "data": {"name": MODEL, "version": "1", "key": "note", "value": "x"}}).encode()
    stamp, delivery = str(int(time.time())), str(uuid.uuid4())
    headers = {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
               "X-MLflow-Signature": sign(loop.secret, delivery, stamp, body)}
    answers = [requests.post(f"{loop.url}/webhook", data=body, headers=headers, timeout=10).json()["result"]
               for _ in range(2)]
    assert answers == ["queued", "duplicate"]


def test_a_version_under_the_accuracy_floor_is_rejected_and_nothing_ships(loop: Loop, versions: dict[str, Any],
                                                                          seaweedfs: Any) -> None:
    bad = versions["bad"]
    loop.client.set_registered_model_alias(MODEL, "production", bad)
    wait_for("the verdict on the scrambled version", lambda: _status(loop, bad) == "rejected", 120)
    reason = _tags(loop, bad)[f"deploy.{loop.target}.reason"]
    assert "accuracy" in reason and "floor" in reason
    manifest, keys = _published(loop, seaweedfs)
    assert manifest["version"] == "1"
    assert not any(k.startswith(f"releases/v{bad}-") for k in keys), "nothing of the rejected version is published"
    time.sleep(2.0)
    assert loop.agent_version() == "1"


def test_a_new_version_ships_and_moving_the_alias_back_rolls_back(loop: Loop, versions: dict[str, Any]) -> None:
    loop.client.set_registered_model_alias(MODEL, "production", "2")
    wait_for("the agent to run v2", lambda: loop.agent_version() == "2", 120)
    wait_for("v2 deployed, v1 superseded", lambda: (_status(loop, "2"), _status(loop, "1")) == ("deployed", "superseded"), 30)
    loop.client.set_registered_model_alias(MODEL, "production", "1")
    wait_for("the agent to roll back to v1", lambda: loop.agent_version() == "1", 120)
    wait_for("v1 deployed again", lambda: _status(loop, "1") == "deployed", 30)


def test_the_poller_catches_up_after_downtime_and_follows_legacy_stages(loop: Loop, versions: dict[str, Any]) -> None:
    client = loop.client
    v2 = client.get_model_version(MODEL, "2")
    loop.stop_controller()
    fresh = client.create_model_version(MODEL, v2.source, v2.run_id, tags=_own_tags(v2),
                                        model_id=v2.source.removeprefix("models:/")).version
    client.set_registered_model_alias(MODEL, "production", fresh)  # nobody is listening
    time.sleep(1.0)
    assert _status(loop, fresh) is None
    loop.start_controller(poll_interval_s=2)
    wait_for(f"the agent to run v{fresh} after the restart", lambda: loop.agent_version() == fresh, 120)
    wait_for("the active version on the registered model",
             lambda: client.get_registered_model(MODEL).tags.get(f"deploy.{loop.target}.active_version") == fresh, 60)

    v1 = client.get_model_version(MODEL, "1")
    staged = client.create_model_version(MODEL, v1.source, v1.run_id, tags=_own_tags(v1),
                                         model_id=v1.source.removeprefix("models:/")).version
    client.delete_registered_model_alias(MODEL, "production")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(MODEL, staged, "Production")  # fires no webhook
    wait_for(f"the agent to run the staged v{staged}", lambda: loop.agent_version() == staged, 120)
    wait_for(f"v{staged} deployed", lambda: _status(loop, staged) == "deployed", 30)
