"""The agent's behaviour, run as on a device (a subprocess without torch/MLflow/cryptography), on a directory location.

Each test publishes like the controller (model first, then the signed manifest), polls with
``--once`` and checks what the device serves (``active.json``), what it tells the controller (its
heartbeat) and that a refused release never replaces the model it had.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from edgeqat.agent.images import load_image, preprocess
from edgeqat.agent.manifest import HEARTBEAT_PREFIX, MANIFEST_KEY
from edgeqat.agent.store import DirStore
from tests.unit.agent.helpers import CLASSES, PRE, Release, Signer, agent_command, device_env, png_bytes, publish, \
    run_agent, tiny_classifier


@dataclass
class Device:
    root: Path
    store: DirStore
    signer: Signer
    key_path: Path
    home: Path

    def once(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_agent(["--once", "--target", "local", "--source", str(self.store.root), "--home", str(self.home),
                          "--public-key", str(self.key_path), "--agent-id", "dev-1", *extra], cwd=self.root)

    def predict(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_agent(["predict", *args, "--home", str(self.home)], cwd=self.root)

    def active(self) -> dict:
        return json.loads((self.home / "active.json").read_text())

    def heartbeat(self) -> dict:
        return json.loads(self.store.get(f"{HEARTBEAT_PREFIX}dev-1.json"))

    def releases(self) -> set[str]:
        return {d.name for d in (self.home / "releases").iterdir()}


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return {v: tiny_classifier(seed) for seed, v in enumerate(["1", "2", "3", "4"])}


@pytest.fixture
def device(tmp_path: Path) -> Device:
    signer = Signer()
    return Device(tmp_path, DirStore(tmp_path / "location"), signer, signer.write_pem(tmp_path / "deploy.pub"),
                  tmp_path / "home")


def _activated(device: Device, release: Release) -> None:
    proc = device.once()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"activated v{release.payload.version}"), proc.stdout
    assert device.active()["sha256"] == release.payload.sha256


def _refused(device: Device, version: str, reason: str, kept: Release) -> dict:
    proc = device.once()
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith(f"refused v{version}: {reason}") or proc.stdout.startswith(f"refused: {reason}"), \
        proc.stdout
    assert device.active()["version"] == kept.payload.version
    assert Path(device.active()["model_path"]).is_file()
    beat = device.heartbeat()
    assert beat["state"] == "refused" and reason in beat["reason"]
    assert beat["active_version"] == kept.payload.version and beat["active_sha256"] == kept.payload.sha256
    return beat


def _expected_class(model: bytes, image_path: Path) -> str:
    import onnx
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(model).graph.initializer}
    logits = preprocess(load_image(image_path), PRE).reshape(1, -1) @ weights["W"] + weights["B"]
    return CLASSES[int(np.argmax(logits))]


def test_nothing_published_is_unchanged(device: Device) -> None:
    proc = device.once()
    assert (proc.returncode, proc.stdout.strip()) == (0, "unchanged: nothing published yet")
    assert device.heartbeat()["active_version"] is None


def test_good_release_activates_heartbeats_and_predicts(device: Device, models: dict[str, bytes]) -> None:
    v1 = publish(device.store, device.signer, models["1"], "1")
    _activated(device, v1)
    active = device.active()
    assert active["model_path"] == str((device.home / "releases" / v1.payload.release_dir / "model.onnx").resolve())
    assert active["preprocessing"] == PRE.to_dict() and active["manifest"] == v1.payload.to_dict()
    assert {"model_name", "version", "target", "activated_at"} <= set(active)
    beat = device.heartbeat()
    assert set(beat) == {"agent_id", "target", "hostname", "model_name", "active_version", "active_sha256", "state",
                         "reason", "polled_at", "activated_at", "cpu", "isa", "onnxruntime", "pid"}
    assert (beat["agent_id"], beat["state"], beat["active_version"], beat["model_name"]) == ("dev-1", "activated", "1",
                                                                                             "tiny")

    again = device.once()
    assert (again.returncode, again.stdout.strip()) == (0, "unchanged v1")
    assert device.heartbeat()["state"] == "unchanged"

    rng = np.random.default_rng(1)
    png, pgm = device.root / "a.png", device.root / "b.pgm"
    png.write_bytes(png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), filters=(1, 4)))
    pgm.write_bytes(b"P5\n16 16\n255\n" + rng.integers(0, 256, 256, dtype=np.uint8).tobytes())
    proc = device.predict(str(png), str(pgm))
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [(p, c) for p, c, _ in lines] == [(str(png), _expected_class(models["1"], png)),
                                             (str(pgm), _expected_class(models["1"], pgm))]
    top3 = device.predict(str(png), "--top-k", "3")
    probs = [float(line.split("\t")[2]) for line in top3.stdout.splitlines()]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-3


def test_sha256_mismatch_is_refused_once_and_not_downloaded_again(device: Device, models: dict[str, bytes]) -> None:
    v1 = publish(device.store, device.signer, models["1"], "1")
    _activated(device, v1)
    v2 = publish(device.store, device.signer, models["2"], "2", upload=models["3"])
    beat = _refused(device, "2", f"sha256 mismatch: manifest {v2.payload.sha256}, file ", v1)
    assert v2.payload.release_dir not in device.releases(), "the bad download is deleted"
    (device.store.root / v2.payload.model_key).unlink()  # a second download would now fail differently
    again = _refused(device, "2", "sha256 mismatch", v1)
    assert "refused before" in again["reason"] and beat["reason"] in again["reason"]


@pytest.mark.parametrize("how", ["other key", "edited payload"])
def test_bad_signature_is_refused(device: Device, models: dict[str, bytes], how: str) -> None:
    v1 = publish(device.store, device.signer, models["1"], "1")
    _activated(device, v1)
    v2 = publish(device.store, Signer() if how == "other key" else device.signer, models["2"], "2")
    if how == "edited payload":
        doc = json.loads(v2.manifest)
        doc["payload"]["metrics"]["test/acc_int8"] = 0.99
        device.store.put(MANIFEST_KEY, json.dumps(doc).encode())
    _refused(device, "2", "bad signature", v1)


def test_wrong_target_is_refused(device: Device, models: dict[str, bytes]) -> None:
    v1 = publish(device.store, device.signer, models["1"], "1")
    _activated(device, v1)
    publish(device.store, device.signer, models["2"], "2", target="other")
    _refused(device, "2", "manifest is for target 'other'", v1)


def test_smoke_test_failure_is_refused(device: Device, models: dict[str, bytes]) -> None:
    v1 = publish(device.store, device.signer, models["1"], "1")
    _activated(device, v1)
    broken = publish(device.store, device.signer, b"this is not an ONNX model", "2")
    _refused(device, "2", "smoke test failed: cannot load model", v1)
    assert broken.payload.release_dir not in device.releases()
    two_names = publish(device.store, device.signer, models["2"], "3",
                            preprocessing=replace(PRE, class_names=("a", "b")))
    _refused(device, two_names.payload.version, "smoke test failed: output shape (1, 3), expected (1, 2)", v1)


def test_upgrade_rollback_from_local_copy_and_pruning(device: Device, models: dict[str, bytes]) -> None:
    v1 = publish(device.store, device.signer, models["1"], "1")
    _activated(device, v1)
    v2 = publish(device.store, device.signer, models["2"], "2")
    _activated(device, v2)
    # Roll back: the manifest points at v1 again; the store's copy is gone, the device's is used.
    (device.store.root / v1.payload.model_key).unlink()
    device.store.put(MANIFEST_KEY, device.signer.manifest(v1.payload))
    proc = device.once()
    assert proc.stdout.strip() == "activated v1: local copy reused", proc.stdout + proc.stderr
    assert device.active()["version"] == "1" and device.heartbeat()["active_version"] == "1"
    v3 = publish(device.store, device.signer, models["3"], "3")
    _activated(device, v3)
    v4 = publish(device.store, device.signer, models["4"], "4")
    _activated(device, v4)
    # The 3 most recently activated stay: v4, v3 and v1 (activated after v2).
    assert device.releases() == {r.payload.release_dir for r in (v4, v3, v1)}


def test_bad_input_is_one_line_exit_2(device: Device, models: dict[str, bytes]) -> None:
    cases = [
        (["--once", "--public-key", str(device.root / "missing.pub"), "--home", str(device.home)], "--public-key"),
        (["predict", "x.png", "--home", str(device.home)], "no active model"),
        (["--once", "--interval", "0"], "must be > 0"),
        (["--once", "--source", "s3:///nobucket", "--public-key", str(device.key_path)], "no bucket"),
    ]
    for args, fix in cases:
        proc = run_agent(args, cwd=device.root)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and fix in proc.stderr, proc.stderr
    _activated(device, publish(device.store, device.signer, models["1"], "1"))
    for path, fix in [(device.root / "missing.png", "cannot read image"), (device.key_path, "not a supported image")]:
        proc = device.predict(str(path))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and fix in proc.stderr, proc.stderr


def test_unreachable_store_exits_1_and_keeps_the_model(device: Device, models: dict[str, bytes]) -> None:
    v1 = publish(device.store, device.signer, models["1"], "1")
    _activated(device, v1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    proc = run_agent(["--once", "--source", "s3://edgeqat-artifacts/deployments/local/", "--home", str(device.home),
                      "--public-key", str(device.key_path)], cwd=device.root, env=env)
    assert proc.returncode == 1 and proc.stdout.startswith("unreachable v1: S3 endpoint unreachable"), proc.stdout
    assert device.active()["version"] == "1"


def test_heartbeat_failure_does_not_stop_activation(device: Device, models: dict[str, bytes]) -> None:
    v1 = publish(device.store, device.signer, models["1"], "1")
    (device.store.root / "heartbeats").write_text("a file where the heartbeat directory should be")
    proc = device.once()
    assert proc.returncode == 0 and proc.stdout.startswith("activated v1"), proc.stdout + proc.stderr
    assert "heartbeat not written" in proc.stderr
    assert device.active()["sha256"] == v1.payload.sha256


def test_running_agent_follows_releases_and_stops_on_sigterm(device: Device, models: dict[str, bytes]) -> None:
    args = ["--source", str(device.store.root), "--home", str(device.home), "--public-key", str(device.key_path),
            "--agent-id", "dev-1", "--interval", "0.2"]

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 20
        while not ((device.home / "active.json").exists() and device.active()["version"] == version):
            assert proc.poll() is None and time.monotonic() < deadline, f"v{version} was not activated"
            time.sleep(0.1)

    publish(device.store, device.signer, models["1"], "1")
    proc = subprocess.Popen(agent_command(args), cwd=device.root, env=device_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("1")
        publish(device.store, device.signer, models["2"], "2")
        wait_for("2")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "activated v1" in out and "activated v2" in out and "Traceback" not in out
    assert sum("unchanged v2" in line for line in out.splitlines()) <= 1, "one line per change of state"
