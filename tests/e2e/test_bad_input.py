"""Every entry point answers bad input the same way: exit 2, one line on stderr naming the fix, no traceback.

One table across ``train``, ``stack``, ``data publish``, ``sync``, ``promote``, ``deploy`` and ``agent``:
numbers out of range, wrong types, unknown groups and keys, missing and corrupt files, servers that
are not there. Each case runs the real command in a subprocess against a throw-away SQLite store,
so none of them can leave a run RUNNING on a server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
DEAD = "http://127.0.0.1:9"  # discard port: nothing listens

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
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "empty").mkdir()
    (tmp / "bad.yaml").write_text("gate: {threads: 0}\n")
    (tmp / "x.png").write_bytes(b"not a png")
    return tmp


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case: str, workdir: Path) -> None:
    argv, named = CASES[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-m", "edgeqat", *(a.format(tmp=workdir) for a in argv)], env=env,
                         cwd=workdir, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip() and "Warning" not in line
             and not line.startswith(("W1", "  warnings.warn"))]
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(lines) == 1 and named in lines[0], out.stderr[-2000:]
