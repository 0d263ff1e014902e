"""The agent installs and runs where only its runtime, numpy and boto3 are: a fresh venv, as on a device.

``pip install --no-deps <repo>`` on top of ``onnxruntime numpy boto3`` (what the README documents),
then ``edgeqat-agent --once`` against a signed release and ``edgeqat-agent predict`` on a PNG.
The venv has no torch, Lightning, MLflow, Hydra, onnx or cryptography at all, so this is the device
as it is, not one simulated by blocking imports.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeqat.agent.store import DirStore
from tests.unit.agent.helpers import CLASSES, Signer, png_bytes, publish, tiny_classifier

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "onnxruntime", "numpy", "boto3"], check=True, timeout=600, capture_output=True)
    subprocess.run([*pip, "--no-deps", str(REPO)], check=True, timeout=600, capture_output=True)
    return venv


def test_the_agent_runs_on_a_device_without_the_training_stack(device_venv: Path, tmp_path: Path) -> None:
    python = device_venv / "bin" / "python"
    absent = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in ('torch', "
                             "'lightning', 'mlflow', 'hydra', 'onnx', 'cryptography') if u.find_spec(m)])"],
                            capture_output=True, text=True, timeout=60)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr

    signer, store = Signer(), DirStore(tmp_path / "deployments" / "local")
    publish(store, signer, tiny_classifier(0), "1")
    key = signer.write_pem(tmp_path / "deploy_signing_key.pub")
    agent = [str(device_venv / "bin" / "edgeqat-agent")]
    home = tmp_path / "device-home"
    once = subprocess.run([*agent, "--target", "local", "--source", str(store.root), "--home", str(home),
                           "--public-key", str(key), "--once"], capture_output=True, text=True, timeout=120)
    assert once.returncode == 0 and "activated v1" in once.stdout, once.stdout + once.stderr

    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)))
    pred = subprocess.run([*agent, "predict", str(image), "--home", str(home)], capture_output=True, text=True,
                          timeout=120)
    assert pred.returncode == 0, pred.stderr
    path, name, prob = pred.stdout.strip().split("\t")
    assert path == str(image) and name in CLASSES and 0 < float(prob) <= 1
