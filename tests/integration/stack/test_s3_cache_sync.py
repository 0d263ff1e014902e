"""``sync_s3_prefix`` / ``upload_tree`` against a real SeaweedFS."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from edgeqat.data.s3_cache import MANIFEST_SUFFIX, sync_s3_prefix, upload_tree
from edgeqat.stack.processes import free_port
from edgeqat.stack.s3 import S3Error
from tests.fixtures.servers import S3Server

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_env(seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    return seaweedfs


@pytest.fixture
def prefix_uri() -> str:
    return f"s3://edgeqat-data/tests/{uuid.uuid4().hex[:8]}/tiny"


def _tree(root: Path) -> dict[str, bytes]:
    files = {f"{cls}/img{i}.png": os.urandom(200 + i) for cls in ("cat", "dog") for i in range(3)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sync_downloads_then_skips_then_refreshes_only_changes(s3_env: S3Server, prefix_uri: str,
                                                               tmp_path: Path) -> None:
    files = _tree(tmp_path / "src")
    assert upload_tree(tmp_path / "src", prefix_uri) == 6
    assert upload_tree(tmp_path / "src", prefix_uri) == 0, "unchanged files are not uploaded again"
    cache = tmp_path / "cache"

    first = sync_s3_prefix(prefix_uri, cache)
    assert (first.downloaded, first.skipped, first.deleted) == (6, 0, 0)
    assert first.local_dir == cache / "edgeqat-data" / prefix_uri.split("edgeqat-data/", 1)[1]
    assert _read_tree(first.local_dir) == files
    assert first.local_dir.with_name(first.local_dir.name + MANIFEST_SUFFIX).is_file()

    second = sync_s3_prefix(prefix_uri, cache)
    assert (second.downloaded, second.skipped) == (0, 6)

    bucket, key_prefix = "edgeqat-data", prefix_uri.split("edgeqat-data/", 1)[1]
    s3 = s3_env.client()
    s3.put_object(Bucket=bucket, Key=f"{key_prefix}/cat/img0.png", Body=b"changed upstream")
    s3.delete_object(Bucket=bucket, Key=f"{key_prefix}/dog/img2.png")
    (first.local_dir / "dog" / "img1.png").write_bytes(b"damaged locally")  # different size: fetched again

    third = sync_s3_prefix(prefix_uri, cache)
    assert (third.downloaded, third.skipped, third.deleted) == (2, 3, 1)
    expected = {**files, "cat/img0.png": b"changed upstream"}
    del expected["dog/img2.png"]
    assert _read_tree(third.local_dir) == expected
    assert not list(third.local_dir.rglob(".edgeqat-part-*")), "no temporary file is left behind"


def test_sync_handles_multipart_objects(s3_env: S3Server, prefix_uri: str, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    big = os.urandom(6 * 1024**2 + 1)
    bucket, key_prefix = "edgeqat-data", prefix_uri.split("edgeqat-data/", 1)[1]
    (tmp_path / "big.bin").write_bytes(big)
    s3_env.client().upload_file(str(tmp_path / "big.bin"), bucket, f"{key_prefix}/a/big.bin",
                                Config=TransferConfig(multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2))
    result = sync_s3_prefix(prefix_uri, tmp_path / "cache")
    assert result.downloaded == 1
    assert (result.local_dir / "a" / "big.bin").read_bytes() == big
    assert sync_s3_prefix(prefix_uri, tmp_path / "cache").skipped == 1


def test_missing_bucket_is_named(s3_env: S3Server, tmp_path: Path) -> None:
    with pytest.raises(S3Error, match=r"Bucket 'no-such-bucket' does not exist at http://127\.0\.0\.1:\d+"):
        sync_s3_prefix("s3://no-such-bucket/x", tmp_path)


def test_empty_prefix_is_an_error_not_an_empty_dataset(s3_env: S3Server, tmp_path: Path) -> None:
    with pytest.raises(S3Error, match="No objects under s3://edgeqat-data/nothing-here"):
        sync_s3_prefix("s3://edgeqat-data/nothing-here", tmp_path)


def test_wrong_keys_are_named_without_the_secret(s3_env: S3Server, prefix_uri: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(S3Error, match="credentials were rejected") as e:
        sync_s3_prefix(prefix_uri, tmp_path)
    assert "wrong-secret-value" not in str(e.value)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("x")
    with pytest.raises(S3Error, match="credentials were rejected"):
        upload_tree(tmp_path / "src", prefix_uri)


def test_unreachable_endpoint_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(S3Error, match=f"Cannot reach the S3 endpoint {dead}.*edgeqat stack up"):
        sync_s3_prefix("s3://edgeqat-data/x", tmp_path, endpoint_url=dead)


def test_bad_uri_is_refused(tmp_path: Path) -> None:
    with pytest.raises(S3Error, match="expected s3://<bucket>/<prefix>"):
        sync_s3_prefix("/local/path", tmp_path)
