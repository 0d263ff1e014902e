"""A dataset published to S3 trains like a local one, and the cache does not fetch it twice."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from edgeqat.cli import main as edgeqat
from edgeqat.data import load_source
from edgeqat.data.datamodule import stratified_split
from edgeqat.data.s3_cache import MANIFEST_SUFFIX
from tests.fixtures.servers import S3Server

pytestmark = pytest.mark.integration

JOB = ["data.image_size=16", "model=resnet18", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
       "trainer.enable_progress_bar=false", "quant=fp32", "quant.benchmark_resolutions=[]", "quant.latency_iters=3",
       "tracking.experiment_name=s3-data"]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every cached file with its inode and mtime: a download (temp file + rename) changes both."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_publish_to_s3_then_train_from_it_twice_with_a_warm_cache(
        seaweedfs: S3Server, mlflow_server_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"s3://edgeqat-data/tests/{uuid.uuid4().hex[:8]}/"
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)

    assert edgeqat(["data", "publish", "digits", uri]) == 0
    assert "1797 images in 10 classes; 1797 uploaded, 0 unchanged" in capsys.readouterr().out
    key_prefix = uri.removeprefix("s3://edgeqat-data/")
    with closing(seaweedfs.client()) as s3:  # closed: a keep-alive connection would slow SeaweedFS's stop
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="edgeqat-data", Prefix=key_prefix)
        keys = [o["Key"][len(key_prefix):] for page in pages for o in page.get("Contents", [])]
    assert len(keys) == 1797 and {k.split("/")[0] for k in keys} == {str(d) for d in range(10)}
    assert edgeqat(["data", "publish", "digits", uri]) == 0
    assert "0 uploaded, 1797 unchanged" in capsys.readouterr().out

    server = mlflow_server_module(s3=seaweedfs)
    cache = tmp_path / "cache"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, **seaweedfs.env(),
           **server.env(), "EDGEQAT_CACHE_DIR": str(cache)}
    data = ["data=imagefolder", f"data.root={uri}", "data.in_chans=1", "data.options.channels=1"]

    def train(name: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "edgeqat", "train", *data, *JOB, f"tracking.run_name={name}",
             f"output_dir={tmp_path}/out"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("s3-data")
        (run,) = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
        assert run.info.status == "FINISHED"
        expected = len(stratified_split(load_source("digits").labels, 0.1, 0.2, 42)["train"])
        assert run.data.metrics["data/train/count"] == expected
        assert run.data.params["data.root"] == uri
        return run.info.run_id

    train("cold")
    mirror = cache / "datasets" / "edgeqat-data" / key_prefix.rstrip("/")
    pngs = sorted(mirror.rglob("*.png"))
    assert len(pngs) == 1797, "the first run synced the prefix into EDGEQAT_CACHE_DIR"
    with_labels = load_source("imagefolder", str(mirror), channels=1)
    assert np.bincount(with_labels.labels).tolist() == np.bincount(load_source("digits").labels).tolist()

    manifest = mirror.with_name(mirror.name + MANIFEST_SUFFIX)
    before, recorded = _snapshot(mirror), manifest.read_text()
    train("warm")
    assert _snapshot(mirror) == before, "the second run re-downloaded objects that had not changed"
    assert manifest.read_text() == recorded, "the same ETags, so the same objects, were recorded"
