"""What devices report reaches the registry: the versions live agents run, as ``deploy.<target>.active_version``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mlflow.tracking import MlflowClient

from edgeqat.agent.store import DirStore
from edgeqat.deploy.controller import Controller
from edgeqat.deploy.signing import load_or_create_signer
from edgeqat.deploy.state import DeployState
from edgeqat.deploy.targets import load_target


def _beat(store: DirStore, agent: str, version: str, age: timedelta) -> None:
    polled = (datetime.now(timezone.utc) - age).isoformat(timespec="seconds")
    store.put(f"heartbeats/{agent}.json", json.dumps({"agent_id": agent, "model_name": "m", "active_version": version,
                                                      "polled_at": polled}).encode())


def test_live_agents_versions_are_surfaced_stale_and_broken_ones_are_not(tracking_uri: str, tmp_path: Path) -> None:
    MlflowClient(tracking_uri).create_registered_model("m")
    store = DirStore(tmp_path / "pub")
    _beat(store, "edge-1", "3", timedelta(seconds=5))
    _beat(store, "edge-2", "2", timedelta(seconds=30))
    _beat(store, "gone", "1", timedelta(days=1))
    store.put("heartbeats/broken.json", b"{not json")
    target = load_target("local", [f"publish={tmp_path / 'pub'}", "name=t"])
    controller = Controller(tracking_uri, [target], DeployState(tmp_path / "state.db"),
                            load_or_create_signer(tmp_path / "home"), tmp_path)
    assert controller.surface_heartbeats() == {"t:m": ["2", "3"]}
    assert MlflowClient(tracking_uri).get_registered_model("m").tags["deploy.t.active_version"] == "2,3"
    controller.state.close()
