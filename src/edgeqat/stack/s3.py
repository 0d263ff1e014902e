"""S3 plumbing shared by the stack (SeaweedFS) and the dataset cache: clients, keys, error messages.

Keys come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``. Only the embedded stack (an
endpoint on this machine's loopback) falls back to the documented local defaults below; anything
else uses boto3's own chain (profiles, instance roles), so production S3 never sees them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from edgeqat.errors import EdgeqatError

if TYPE_CHECKING:
    from botocore.client import BaseClient

#: Documented keys of the embedded SeaweedFS when the environment sets none (local use only).
LOCAL_ACCESS_KEY = "edgeqat-local"
LOCAL_SECRET_KEY = "edgeqat-local-secret"  # documented, local-only: not a secret
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
ENDPOINT_ENVS = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
               "ExpiredToken", "AuthorizationHeaderMalformed"}
_MISSING_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound"}


class S3Error(EdgeqatError):
    """An S3 call failed for a reason the user can fix (bucket, keys, endpoint); one line."""


@dataclass(frozen=True)
class S3Credentials:
    """An access key pair; the secret never appears in ``repr`` (and so never in logs)."""

    access_key: str
    secret_key: str = field(repr=False)
    source: str = "environment"  # "environment" | "local defaults"


def is_loopback_url(url: str | None) -> bool:
    """Whether ``url`` points at this machine (where the embedded stack's defaults apply)."""
    host = urlparse(url).hostname if url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials_from_env(
    env: Mapping[str, str] | None = None, *, allow_local_defaults: bool
) -> S3Credentials | None:
    """The S3 keys in ``env``; the local defaults when it has none and ``allow_local_defaults``.

    Returns ``None`` (boto3's own credential chain) when neither applies.

    Raises:
        S3Error: only one of the two variables is set.
    """
    env = os.environ if env is None else env
    access, secret = env.get(ACCESS_KEY_ENV, ""), env.get(SECRET_KEY_ENV, "")
    if access and secret:
        return S3Credentials(access, secret, "environment")
    if access or secret:
        missing = SECRET_KEY_ENV if access else ACCESS_KEY_ENV
        present = ACCESS_KEY_ENV if access else SECRET_KEY_ENV
        raise S3Error(f"{missing} is not set but {present} is: export both, or neither")
    if allow_local_defaults:
        return S3Credentials(LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, "local defaults")
    return None


def with_local_s3_keys(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus S3 keys for boto3: its own, else the local stack's defaults for a loopback endpoint.

    For processes edgeqat starts that talk to S3 through boto3 itself (the deploy controller, the
    agent), which know nothing of those defaults.
    """
    env = dict(env)
    creds = credentials_from_env(env, allow_local_defaults=is_loopback_url(env.get("MLFLOW_S3_ENDPOINT_URL")))
    if creds is not None:
        env.setdefault(ACCESS_KEY_ENV, creds.access_key)
        env.setdefault(SECRET_KEY_ENV, creds.secret_key)
    return env


def resolve_endpoint_url(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """``explicit``, else ``$MLFLOW_S3_ENDPOINT_URL``, else ``$AWS_ENDPOINT_URL``, else AWS itself."""
    if explicit:
        return explicit
    env = os.environ if env is None else env
    for name in ENDPOINT_ENVS:
        if env.get(name):
            return env[name]
    return None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (prefix without slashes at ends).

    Raises:
        S3Error: not an ``s3://`` URI with a bucket.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise S3Error(f"Not an S3 URI: {uri!r}; expected s3://<bucket>/<prefix>, e.g. s3://edgeqat-data/cifar10")
    return parsed.netloc, parsed.path.strip("/")


def make_s3_client(
    endpoint_url: str | None,
    credentials: S3Credentials | None = None,
    *,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
    max_attempts: int = 3,
) -> BaseClient:
    """A boto3 S3 client; path-style addressing for custom endpoints (no per-bucket DNS there)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    kwargs: dict[str, Any] = {"endpoint_url": endpoint_url, "config": config}
    if endpoint_url and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        kwargs["region_name"] = "us-east-1"  # S3-compatible servers accept any region; boto3 wants one
    if credentials is not None:
        kwargs["aws_access_key_id"] = credentials.access_key
        kwargs["aws_secret_access_key"] = credentials.secret_key
    return boto3.client("s3", **kwargs)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``""`` for other errors)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def explain_s3_error(exc: BaseException, *, endpoint_url: str | None, bucket: str, action: str) -> S3Error:
    """Turn a botocore error into one line naming the endpoint, the bucket and the fix."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = endpoint_url or "AWS S3"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return S3Error(
            f"Cannot reach the S3 endpoint {where} while trying to {action}: start the local stack "
            f"(`edgeqat stack up`) or set MLFLOW_S3_ENDPOINT_URL to a reachable endpoint"
        )
    if isinstance(exc, ReadTimeoutError):
        return S3Error(f"The S3 endpoint {where} timed out while trying to {action}: check that it is healthy")
    if isinstance(exc, NoCredentialsError):
        return S3Error(f"No S3 credentials found to {action} at {where}: export {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _MISSING_BUCKET_CODES:
            return S3Error(
                f"Bucket {bucket!r} does not exist at {where} (while trying to {action}): check the URI, or "
                f"create it (`edgeqat stack up` creates edgeqat-artifacts and edgeqat-data)"
            )
        if code in _AUTH_CODES:
            return S3Error(
                f"S3 credentials were rejected by {where} ({code}) while trying to {action} in bucket "
                f"{bucket!r}: export the {ACCESS_KEY_ENV} / {SECRET_KEY_ENV} that this server accepts"
            )
        return S3Error(f"S3 error {code or '?'} at {where} while trying to {action} in bucket {bucket!r}: {exc}")
    return S3Error(f"S3 request to {where} failed while trying to {action}: {type(exc).__name__}: {exc}")


def botocore_errors() -> tuple[type[BaseException], ...]:
    """The botocore exception types :func:`explain_s3_error` understands (for ``except`` clauses)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)
