"""Every entry point answers bad input the same way: exit 2, one line on stderr naming the fix, no traceback.

One table across ``train`` (single jobs and sweeps), ``sensitivity``, ``stack``, ``data publish``, ``sync``, ``promote``, ``deploy``
and ``agent``:
numbers out of range, wrong types, unknown groups and keys, missing and corrupt files, servers that
are not there. Each case runs the real command in a subprocess against a throw-away SQLite store,
so none of them can leave a run RUNNING on a server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.servers import MlflowServer, MlflowServerFactory

pytestmark = pytest.mark.e2e
DEAD = "http://127.0.0.1:9"  # discard port: nothing listens
# A client with the wrong password for a real basic-auth MLflow server ({auth}) or the wrong keys for the
# session's real SeaweedFS ({s3}); the servers start only when a case needs them.
WRONG_LOGIN = {"MLFLOW_TRACKING_URI": "{auth}", "MLFLOW_TRACKING_USERNAME": "admin",
               "MLFLOW_TRACKING_PASSWORD": "wrong-password-000"}
WRONG_KEYS = {"AWS_ACCESS_KEY_ID": "someone-else", "AWS_SECRET_ACCESS_KEY": "wrong-secret-000"}

CASES = {
    # train: numbers, types, names, files
    "negative epochs": (["train", "trainer.max_epochs=-1"], "trainer.max_epochs=-1 is out of range"),
    "zero image size": (["train", "data.image_size=0"], "data.image_size=0 is out of range"),
    "zero batch size": (["train", "data.batch_size=0"], "data.batch_size=0 is out of range"),
    "negative QAT epochs": (["train", "quant.qat_epochs=-2"], "quant.qat_epochs=-2"),
    "tiny benchmark resolution": (["train", "quant.benchmark_resolutions=[4]"], "resolutions are >= 8"),
    "wrong type": (["train", "trainer.max_epochs=abc"], "Bad value for trainer.max_epochs"),
    "unknown group option": (["train", "model=resnet181"], "Choose one of"),
    "unknown key": (["train", "trainer.max_epoch=3"], "Did you mean 'trainer.max_epochs'"),
    "unknown timm model": (["train", "model.name=resnet181", "data=digits"], "Did you mean 'resnet18'"),
    "unknown ISA": (["train", "quant.target_isa=avx3"], "Did you mean 'avx2'"),
    "missing dataset root": (["train", "data=imagefolder", "data.root={tmp}/nowhere"], "does not exist"),
    "empty class folders": (["train", "data=imagefolder", "data.root={tmp}/empty"], "class folder"),
    "missing checkpoint": (["train", "data=digits", "quant.init_checkpoint={tmp}/no.ckpt"], "is not a file"),
    "truncated checkpoint": (["train", "data=digits", "quant.init_checkpoint={tmp}/truncated.ckpt"],
                             "is not a readable checkpoint"),
    "non-image file in a class folder": (["train", "data=imagefolder", "data.root={tmp}/tree_bad"],
                                         "Unreadable image(s)"),
    "class folder without images": (["train", "data=imagefolder", "data.root={tmp}/tree_no_images"], "holds no image"),
    "Fashion-MNIST not installed": (["train", "data=fashion_mnist", "data.root={tmp}/empty"],
                                    "apt-get install dataset-fashion-mnist"),
    "zero training samples": (["train", "data.max_train_samples=0"], "data.max_train_samples=0 is out of range"),
    "unknown float scope": (["train", "quant.float_scope=activations"], "quant.float_scope=activations: use one of"),
    "sensitivity of no such run": (["sensitivity", "0123456789abcdef"], "no run '0123456789abcdef'"),
    "resume of no such run": (["train", "resume=0123456789abcdef"], "resume=0123456789abcdef: no such run"),
    "negative checkpoint interval": (["train", "tracking.checkpoint_interval_s=-1"], "is out of range"),
    # sweeps: every job's config is checked before the parent run exists
    "sweep job that does not compose": (["train", "-m", "model=resnet18,nope"], "sweep job 'model=nope'"),
    "sweep over an interval": (["train", "-m", "seed=interval(1,2)"], "list values as key=a,b,c"),
    "sweep with an unknown launcher": (["train", "-m", "hydra/launcher=slurm", "seed=1,2"],
                                       "Unknown hydra/launcher config 'slurm'"),
    "sweep ranked by an unknown column": (["train", "-m", "seed=1,2", "sweep.best=acc"], "sweep.best=acc: use one of"),
    # the other entry points
    "stack port out of range": (["stack", "up", "--mlflow-port", "70000", "--home", "{tmp}/h"], "out of range"),
    "sync of a non-spool": (["sync", "{tmp}"], "is not an edgeqat spool"),
    "publish of an unknown source": (["data", "publish", "nosuch", "s3://edgeqat-data/x"], "Unknown data source"),
    "publish to a dead S3": (["data", "publish", "digits", "s3://edgeqat-data/x", "--endpoint-url", DEAD],
                             "Cannot reach the S3 endpoint"),
    "promote on a dead server": (["promote", "m", "1", "--alias", "production", "--tracking-uri", DEAD],
                                 "Cannot reach the tracking server"),
    "promote to a reserved alias": (["promote", "m", "1", "--alias", "latest"], "reserved"),
    "promote to an unknown stage": (["promote", "m", "1", "--stage", "Prod"], "choose one of None, Staging"),
    "unknown deploy target": (["deploy", "reconcile", "--target", "lcoal"], "Did you mean 'local'"),
    "bad deploy target value": (["deploy", "reconcile", "--target", "{tmp}/bad.yaml"], "gate.threads"),
    "agent without its key": (["agent", "--once", "--home", "{tmp}/a", "--public-key", "{tmp}/no.pub"], "not found"),
    "predict without a model": (["agent", "predict", "{tmp}/x.png", "--home", "{tmp}/a"], "no active model"),
    "train with a wrong password": (["train", "data=digits"], "refuses these credentials", WRONG_LOGIN),
    "promote with a wrong password": (["promote", "m", "1", "--alias", "production"], "refuses these credentials",
                                      WRONG_LOGIN),
    "publish with wrong S3 keys": (["data", "publish", "digits", "s3://edgeqat-data/x", "--endpoint-url", "{s3}"],
                                   "S3 credentials were rejected", WRONG_KEYS),
    "predict with a truncated model": (["agent", "predict", "{tmp}/x.png", "--home", "{tmp}/truncated_agent"],
                                       "no longer matches its sha256"),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "empty").mkdir()
    (tmp / "bad.yaml").write_text("gate: {threads: 0}\n")
    (tmp / "x.png").write_bytes(b"not a png")
    (tmp / "truncated.ckpt").write_bytes(b"PK\x03\x04" + bytes(200))  # the start of a zip, cut off
    for tree, files in {"tree_bad": {"a/0.png": _png(), "b/0.png": b"<html>not an image</html>"},
                        "tree_no_images": {"a/0.png": _png(), "b/notes.txt": b"no images here"}}.items():
        for name, data in files.items():
            (tmp / tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / tree / name).write_bytes(data)
    _truncated_active_model(tmp / "truncated_agent")
    return tmp


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def _truncated_active_model(home: Path) -> None:
    """An agent home whose activated model file lost its second half on disk after it was verified."""
    import hashlib

    from edgeqat.agent.manifest import Preprocessing
    from edgeqat.agent.predictor import ACTIVE_FILE, ActiveModel
    from tests.unit.agent.helpers import tiny_classifier

    model = tiny_classifier(seed=0)
    path = home / "models" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(model[: len(model) // 2])
    active = ActiveModel("m", "1", hashlib.sha256(model).hexdigest(), path,
                         Preprocessing(1, 8, (0.5,), (0.25,), ("a", "b", "c")), "local", "2026-12-04T00:00:00+00:00", {})
    (home / ACTIVE_FILE).write_text(json.dumps(active.to_dict()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case: str, workdir: Path, request: pytest.FixtureRequest,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    argv, named, *rest = CASES[case]
    case_env = rest[0] if rest else {}
    servers = _servers(request, " ".join([*argv, *case_env.values()]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    env.update({key: value.format(**servers) for key, value in case_env.items()})
    out = subprocess.run([sys.executable, "-m", "edgeqat", *(a.format(tmp=workdir, **servers) for a in argv)],
                         env=env, cwd=workdir, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip() and "Warning" not in line
             and not line.startswith(("W1", "  warnings.warn"))]
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(lines) == 1 and named in lines[0], out.stderr[-2000:]
    assert not any(secret in out.stderr + out.stdout for secret in ("wrong-password-000", "wrong-secret-000"))
    if "auth" in servers:  # the refused job left nothing on the server, RUNNING or otherwise
        server = request.getfixturevalue("auth_server")
        for key, value in server.env().items():  # read as the admin
            monkeypatch.setenv(key, value)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.url)
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.fixture(scope="module")
def auth_server(mlflow_server_module: MlflowServerFactory) -> MlflowServer:
    """A real MLflow server with basic auth (no S3: the refusal comes before any artifact)."""
    return mlflow_server_module(auth=True)


def _servers(request: pytest.FixtureRequest, text: str) -> dict[str, str]:
    """URLs of the real servers a case names (``{auth}``, ``{s3}``), each started on first use."""
    servers = {}
    if "{auth}" in text:
        servers["auth"] = request.getfixturevalue("auth_server").url
    if "{s3}" in text:
        servers["s3"] = request.getfixturevalue("seaweedfs").endpoint_url
    return servers

