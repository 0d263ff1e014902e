"""A local mirror of an ``s3://bucket/prefix`` image tree, so ImageFolder datasets can live in S3.

:func:`sync_s3_prefix` downloads only what changed: an object is skipped when the local file has
its size and the ETag recorded at its last download. Each file is written to a temporary name and
renamed into place (a crash never leaves half an image under a real name); single-part uploads
are checked against their MD5 ETag; local files gone from the bucket are deleted. The record of
ETags sits beside the tree (``<local_dir>.edgeqat-sync.json``), never inside it, so no loader sees it.

:func:`upload_tree` is the other direction (``edgeqat data publish``).

Endpoint: the argument, else ``$MLFLOW_S3_ENDPOINT_URL``, else ``$AWS_ENDPOINT_URL``, else AWS.
Keys: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``; for a loopback endpoint (the local stack)
the stack's documented defaults when unset; otherwise boto3's own chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeqat.stack.s3 import (
    S3Error,
    botocore_errors,
    credentials_from_env,
    error_code,
    explain_s3_error,
    is_loopback_url,
    make_s3_client,
    parse_s3_uri,
    resolve_endpoint_url,
)

if TYPE_CHECKING:
    from botocore.client import BaseClient

MANIFEST_SUFFIX = ".edgeqat-sync.json"
_PART_PREFIX = ".edgeqat-part-"
_WORKERS = 8  # parallel transfers: image trees are many small objects, latency-bound


@dataclass(frozen=True)
class S3SyncResult:
    """Where the synced tree is, and what the sync did."""

    local_dir: Path
    downloaded: int
    skipped: int
    deleted: int = 0


@dataclass(frozen=True)
class _Remote:
    rel: str  # path below the prefix, '/'-separated
    key: str
    etag: str
    size: int


def _client(endpoint_url: str | None) -> BaseClient:
    creds = credentials_from_env(allow_local_defaults=is_loopback_url(endpoint_url))
    return make_s3_client(endpoint_url, creds)


def _safe_rel(rel: str, uri: str) -> str:
    """Refuse keys that would land outside the cache (``..``, absolute paths)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise S3Error(f"Object key {rel!r} under {uri} is not a plain relative path: rename it in the bucket")
    return rel


def _list_remote(client: BaseClient, bucket: str, prefix: str, uri: str) -> list[_Remote]:
    key_prefix = f"{prefix}/" if prefix else ""
    objects = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):  # a "folder" marker, not a file
                continue
            rel = _safe_rel(key[len(key_prefix):], uri)
            objects.append(_Remote(rel, key, str(obj.get("ETag", "")).strip('"'), int(obj["Size"])))
    return objects


def list_remote_files(uri: str, *, endpoint_url: str | None = None) -> set[str]:
    """Paths (relative to the prefix of ``uri``) of the objects already there."""
    bucket, prefix = parse_s3_uri(uri)
    endpoint = resolve_endpoint_url(endpoint_url)
    client = _client(endpoint)
    try:
        return {o.rel for o in _list_remote(client, bucket, prefix, uri)}
    except botocore_errors() as e:
        raise explain_s3_error(e, endpoint_url=endpoint, bucket=bucket, action=f"list {uri}") from None
    finally:
        client.close()


def _load_manifest(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
        return data["objects"] if isinstance(data.get("objects"), dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # absent or damaged: every object is checked again, nothing is trusted


def _save_manifest(path: Path, uri: str, objects: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"uri": uri, "objects": objects}, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _is_md5_etag(etag: str) -> bool:
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


def _download(client: BaseClient, bucket: str, obj: _Remote, target: Path, uri: str) -> None:
    """Download to a temporary file beside ``target``, check it, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_PART_PREFIX, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            client.download_fileobj(bucket, obj.key, f)
        size = tmp.stat().st_size
        if size != obj.size:
            raise S3Error(f"s3://{bucket}/{obj.key} arrived with {size} bytes, listed as {obj.size}: sync again")
        if _is_md5_etag(obj.etag):
            digest = hashlib.md5(tmp.read_bytes(), usedforsecurity=False).hexdigest()
            if digest != obj.etag.lower():
                raise S3Error(f"s3://{bucket}/{obj.key} failed its MD5 check (ETag {obj.etag}): sync again")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _local_files(root: Path) -> Iterator[tuple[str, Path]]:
    for path in root.rglob("*"):
        if path.is_file() or path.is_symlink():
            yield path.relative_to(root).as_posix(), path


def _prune_empty_dirs(root: Path) -> None:
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty
            path.rmdir()


def sync_s3_prefix(uri: str, cache_root: Path, *, endpoint_url: str | None = None) -> S3SyncResult:
    """Mirror ``s3://bucket/prefix`` into ``cache_root/bucket/prefix``, transferring only changes.

    Args:
        uri: ``s3://bucket/prefix`` of a class-per-folder tree.
        cache_root: where mirrors live (e.g. ``edgeqat.paths.cache_dir() / "datasets"``).
        endpoint_url: S3-compatible endpoint; default from the environment (see module docstring).

    Returns:
        The local tree and counts of downloaded, skipped (unchanged) and deleted files.

    Raises:
        S3Error: missing bucket, rejected keys, unreachable endpoint, an empty prefix, a bad key, or
            a download that fails its size/MD5 check; one line naming the fix.
    """
    bucket, prefix = parse_s3_uri(uri)
    endpoint = resolve_endpoint_url(endpoint_url)
    local_dir = Path(cache_root).expanduser() / bucket / prefix if prefix else Path(cache_root).expanduser() / bucket
    client = _client(endpoint)
    try:
        return _sync(client, uri, bucket, prefix, endpoint, local_dir)
    finally:
        client.close()  # an open keep-alive connection would hold up the server's graceful stop


def _sync(
    client: BaseClient, uri: str, bucket: str, prefix: str, endpoint: str | None, local_dir: Path
) -> S3SyncResult:
    manifest_path = local_dir.with_name(local_dir.name + MANIFEST_SUFFIX)

    try:
        remote = _list_remote(client, bucket, prefix, uri)
    except botocore_errors() as e:
        raise explain_s3_error(e, endpoint_url=endpoint, bucket=bucket, action=f"list {uri}") from None
    if not remote:
        raise S3Error(
            f"No objects under {uri} at {endpoint or 'AWS S3'}: check the prefix, or upload the tree first "
            f"(`edgeqat data publish <dir> {uri}`)"
        )

    local_dir.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(manifest_path)
    todo, kept = [], {}
    for obj in remote:
        target = local_dir / obj.rel
        seen = manifest.get(obj.rel, {})
        if (target.is_file() and target.stat().st_size == obj.size
                and seen.get("etag") == obj.etag and seen.get("size") == obj.size):
            kept[obj.rel] = seen
        else:
            todo.append(obj)

    def fetch(obj: _Remote) -> None:
        try:
            _download(client, bucket, obj, local_dir / obj.rel, uri)
        except botocore_errors() as e:
            if error_code(e) in {"404", "NoSuchKey"}:
                raise S3Error(f"s3://{bucket}/{obj.key} was deleted while syncing {uri}: sync again") from None
            action = f"download s3://{bucket}/{obj.key}"
            raise explain_s3_error(e, endpoint_url=endpoint, bucket=bucket, action=action) from None

    done = dict(kept)
    try:
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            for obj, _ in zip(todo, pool.map(fetch, todo), strict=True):
                done[obj.rel] = {"etag": obj.etag, "size": obj.size}
    finally:
        _save_manifest(manifest_path, uri, done)  # what did arrive is not fetched again next time

    wanted = {obj.rel for obj in remote}
    deleted = 0
    for rel, path in list(_local_files(local_dir)):
        if rel not in wanted:
            path.unlink()
            deleted += 1
    _prune_empty_dirs(local_dir)
    return S3SyncResult(local_dir=local_dir, downloaded=len(todo), skipped=len(kept), deleted=deleted)


def upload_tree(local_dir: Path, uri: str, *, endpoint_url: str | None = None) -> int:
    """Upload every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``.

    Objects already there with the same size and MD5 are not sent again; nothing is deleted.

    Returns:
        The number of files uploaded.

    Raises:
        S3Error: ``local_dir`` is missing or empty, or the bucket/keys/endpoint are wrong.
    """
    local_dir = Path(local_dir).expanduser()
    if not local_dir.is_dir():
        raise S3Error(f"{local_dir} is not a directory: pass the root of the tree to upload")
    files = sorted((rel, path) for rel, path in _local_files(local_dir) if path.is_file())
    if not files:
        raise S3Error(f"{local_dir} holds no files: nothing to upload to {uri}")
    bucket, prefix = parse_s3_uri(uri)
    endpoint = resolve_endpoint_url(endpoint_url)
    client = _client(endpoint)
    try:
        return _upload(client, files, uri, bucket, prefix, endpoint)
    finally:
        client.close()


def _upload(client: BaseClient, files: list[tuple[str, Path]], uri: str, bucket: str, prefix: str,
            endpoint: str | None) -> int:
    try:
        existing = {o.rel: o for o in _list_remote(client, bucket, prefix, uri)}
    except botocore_errors() as e:
        raise explain_s3_error(e, endpoint_url=endpoint, bucket=bucket, action=f"list {uri}") from None

    def unchanged(rel: str, path: Path) -> bool:
        remote = existing.get(rel)
        if remote is None or remote.size != path.stat().st_size or not _is_md5_etag(remote.etag):
            return False
        return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() == remote.etag.lower()

    todo = [(rel, path) for rel, path in files if not unchanged(rel, path)]

    def put(item: tuple[str, Path]) -> None:
        rel, path = item
        key = posixpath.join(prefix, rel) if prefix else rel
        try:
            client.upload_file(str(path), bucket, key)
        except Exception as e:  # boto3 wraps a ClientError in S3UploadFailedError
            cause = e if isinstance(e, botocore_errors()) else (e.__cause__ or e.__context__)
            if isinstance(cause, botocore_errors()):
                raise explain_s3_error(cause, endpoint_url=endpoint, bucket=bucket, action=f"upload {path}") from None
            raise

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(put, todo))
    return len(todo)
