"""The store interface on a directory, and how an S3 endpoint that is down is reported."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from edgeqat.agent.store import DirStore, NotFound, S3Store, StoreError, StoreUnavailable, open_store


def test_open_store_picks_the_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert isinstance(open_store(str(tmp_path)), DirStore)
    assert open_store(tmp_path.as_uri()).url == str(tmp_path)
    s3 = open_store("s3://bucket/deployments/edge", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store) and s3.url == "s3://bucket/deployments/edge/"
    with pytest.raises(StoreError, match="no bucket"):
        open_store("s3:///x")
    with pytest.raises(StoreError, match="unsupported location"):
        open_store("ftp://host/x")


def test_dir_store_put_get_list_download(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "loc")
    with pytest.raises(NotFound):
        store.get("manifest.json")
    assert store.list("heartbeats/") == []
    store.put("manifest.json", b"{}")
    store.put("heartbeats/a.json", b"1")
    store.put("heartbeats/b.json", b"2")
    store.put("releases/v1-abc/model.onnx", b"model")
    store.put("heartbeats/a.json", b"3")  # overwrite in place
    assert store.get("heartbeats/a.json") == b"3"
    assert store.list("heartbeats/") == ["heartbeats/a.json", "heartbeats/b.json"]
    assert store.list() == ["heartbeats/a.json", "heartbeats/b.json", "manifest.json", "releases/v1-abc/model.onnx"]
    assert store.list("heartbeats/b") == ["heartbeats/b.json"]
    dest = tmp_path / "dev" / "model.onnx"
    store.download("releases/v1-abc/model.onnx", dest)
    assert dest.read_bytes() == b"model" and not dest.with_suffix(".part").exists()
    with pytest.raises(NotFound):
        store.download("releases/v2/model.onnx", dest)
    assert dest.read_bytes() == b"model", "a failed download leaves the existing file alone"
    assert not list((tmp_path / "loc").rglob("*.tmp"))
    with pytest.raises(StoreError, match="relative"):
        store.get("../outside")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_endpoint_down_is_unavailable_quickly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    store = open_store("s3://edgeqat-artifacts/deployments/x/")
    for call in (lambda: store.get("manifest.json"), lambda: store.put("heartbeats/a.json", b"{}"),
                 lambda: store.list("heartbeats/"), lambda: store.download("m.onnx", tmp_path / "m.onnx")):
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            call()
        assert time.monotonic() - start < 10
    assert not (tmp_path / "m.part").exists()
