"""Where releases are published and polled: a local directory or an S3 prefix, behind one small interface.

The publisher (controller) writes manifests, models and reads heartbeats through the same
:class:`Store` the device polls, so both sides agree on keys by construction. Errors are split the
way the agent acts on them: :class:`NotFound` (nothing there yet), :class:`StoreUnavailable`
(endpoint down, timeout, 5xx: keep serving and back off) and any other :class:`StoreError`
(misconfiguration). boto3 is imported only when an ``s3://`` location is opened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from edgeqat.errors import EdgeqatError

if TYPE_CHECKING:
    from botocore.client import BaseClient

__all__ = ["DirStore", "NotFound", "S3Store", "Store", "StoreError", "StoreUnavailable", "open_store",
           "s3_endpoint_from_env"]

ENDPOINT_ENVS = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_CHUNK = 1 << 20


class StoreError(EdgeqatError):
    """A store call failed for a reason that names the location and the fix."""


class NotFound(StoreError):
    """The key does not exist (nothing published there yet)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (connection refused, timeout, 5xx): try again later."""


class Store(Protocol):
    """Keys are ``/``-separated and relative to the location (``manifest.json``, ``heartbeats/a.json``)."""

    url: str

    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes) -> None: ...

    def download(self, key: str, dest: Path) -> None: ...

    def list(self, prefix: str = "") -> list[str]: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise StoreError(f"store key {key!r} must be relative, like 'releases/v1-…/model.onnx'")
    return key


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DirStore:
    """A local (or mounted) directory; every write is atomic (temp file + ``os.replace``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self.url}") from None
        except OSError as e:
            raise StoreError(f"cannot read {key} in {self.url} ({e})") from None

    def put(self, key: str, data: bytes) -> None:
        try:
            write_atomic(self._path(key), data)
        except OSError as e:
            raise StoreError(f"cannot write {key} to {self.url} ({e}): check the directory's permissions") from None

    def download(self, key: str, dest: Path) -> None:
        src = self._path(key)
        part = dest.with_suffix(".part")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with src.open("rb") as fin, part.open("wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
            os.replace(part, dest)
        except (FileNotFoundError, NotADirectoryError):
            part.unlink(missing_ok=True)
            raise NotFound(f"{key} not found in {self.url}") from None
        except OSError as e:
            part.unlink(missing_ok=True)
            raise StoreError(f"cannot copy {key} from {self.url} to {dest} ({e})") from None

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # a put still being written
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def __repr__(self) -> str:
        return f"DirStore({self.url})"


def s3_endpoint_from_env(env: dict[str, str] | None = None) -> str | None:
    """The S3 endpoint the stack and MLflow use: ``MLFLOW_S3_ENDPOINT_URL``, then the AWS variables."""
    env = dict(os.environ) if env is None else env
    return next((env[v] for v in ENDPOINT_ENVS if env.get(v)), None)


def make_client(endpoint_url: str | None = None) -> BaseClient:
    """A boto3 S3 client that notices an outage quickly: 3 s connect, 10 s read, 2 attempts, path style."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StoreError("s3:// locations need boto3: pip install boto3") from None
    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"},
                    s3={"addressing_style": "path"})
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint_url or s3_endpoint_from_env(), region_name=region,
                        config=config)


@dataclass
class _S3Errors:
    """botocore's exception classes, imported once the first S3 store is opened."""

    client_error: type[Exception]
    unavailable: tuple[type[Exception], ...]
    botocore_error: type[Exception]

    @classmethod
    def load(cls) -> _S3Errors:
        from botocore import exceptions as ex

        return cls(ex.ClientError, (ex.ConnectionError, ex.HTTPClientError), ex.BotoCoreError)


_UNAVAILABLE_CODES = {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout", "503", "500", "502",
                      "504"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store:
    """``s3://bucket/prefix/`` through boto3; ``put_object`` is atomic per key, as the agent needs."""

    def __init__(self, bucket: str, prefix: str = "", client: BaseClient | None = None,
                 endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.client = client or make_client(endpoint_url)
        self._errors = _S3Errors.load()

    def _translate(self, e: Exception, key: str) -> StoreError:
        errors = self._errors
        where = f"s3://{self.bucket}/{self.prefix}{key}"
        if isinstance(e, errors.client_error):
            response: dict[str, Any] = getattr(e, "response", {}) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _NOT_FOUND_CODES and code != "NoSuchBucket":
                return NotFound(f"{where} not found")
            if code == "NoSuchBucket":
                return StoreError(f"bucket {self.bucket!r} does not exist at the S3 endpoint: create it or fix the "
                                  "location")
            if status >= 500 or code in _UNAVAILABLE_CODES:
                return StoreUnavailable(f"S3 answered {code or status} for {where}")
            return StoreError(f"S3 refused {where} ({code or status}): check AWS_ACCESS_KEY_ID / "
                              "AWS_SECRET_ACCESS_KEY and the bucket policy")
        if isinstance(e, errors.unavailable) or isinstance(e, OSError):
            return StoreUnavailable(f"S3 endpoint unreachable for {where} ({type(e).__name__})")
        return StoreError(f"S3 call for {where} failed: {e}")

    def _call(self, key: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (self._errors.client_error, self._errors.botocore_error, OSError) as e:
            raise self._translate(e, key) from None

    def get(self, key: str) -> bytes:
        full = self.prefix + _check_key(key)
        response = self._call(key, self.client.get_object, Key=full)
        try:
            return response["Body"].read()
        except (self._errors.botocore_error, OSError) as e:
            raise self._translate(e, key) from None

    def put(self, key: str, data: bytes) -> None:
        self._call(key, self.client.put_object, Key=self.prefix + _check_key(key), Body=data)

    def download(self, key: str, dest: Path) -> None:
        response = self._call(key, self.client.get_object, Key=self.prefix + _check_key(key))
        part = dest.with_suffix(".part")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with part.open("wb") as f:
                for chunk in response["Body"].iter_chunks(_CHUNK):
                    f.write(chunk)
            os.replace(part, dest)
        except (self._errors.botocore_error, OSError) as e:
            part.unlink(missing_ok=True)
            raise self._translate(e, key) from None

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call(prefix, self.client.list_objects_v2, Prefix=self.prefix + prefix, **token)
            keys += [o["Key"][len(self.prefix):] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def __repr__(self) -> str:
        return f"S3Store({self.url})"


def open_store(url: str, *, endpoint_url: str | None = None) -> Store:
    """The store behind ``url``: ``s3://bucket/prefix/`` (:class:`S3Store`), a path or ``file://`` (:class:`DirStore`).

    Args:
        url: the deployment location.
        endpoint_url: S3 endpoint; default from ``MLFLOW_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` /
            ``AWS_ENDPOINT_URL`` (boto3's default when none is set). Credentials: boto3's own chain.

    Raises:
        StoreError: an ``s3://`` URL without a bucket, or boto3 missing.
    """
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{url!r} has no bucket: use s3://BUCKET/PREFIX/")
        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url)
    if parsed.scheme == "file":
        return DirStore(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise StoreError(f"unsupported location {url!r}: use a directory, file:///path or s3://bucket/prefix/")
    return DirStore(url)
