"""The MLflow tracking server as a subprocess: SQL backend, proxied artifacts, optional basic auth.

The server proxies artifacts (``--serve-artifacts``) to S3, so clients need the tracking URI only,
never S3 keys. Files of 500 MB and more go up in parts straight to S3 through presigned URLs that
the server hands out (MLflow >= 3.x advertises this in ``/server-info``; tune with the *client*
variables ``MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE`` and ``MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE``,
or set ``MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false`` where clients cannot reach the S3 endpoint).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeqat.stack.auth import AuthSettings, write_auth_config
from edgeqat.stack.errors import BinaryNotFoundError, StackError
from edgeqat.stack.processes import LOOPBACK, ProcessRecord, ServerSpec, child_env, start_server
from edgeqat.stack.s3 import ACCESS_KEY_ENV, SECRET_KEY_ENV, S3Credentials
from edgeqat.tracking.secrets import mask_url

DEFAULT_MLFLOW_PORT = 5000
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


@dataclass(frozen=True)
class MlflowServerConfig:
    """One ``mlflow server``: where it keeps runs and artifacts, its port, and its auth."""

    port: int
    backend_store_uri: str
    state_dir: Path  # working directory of the server (nothing of ours is written elsewhere)
    artifacts_destination: str | None = None  # s3://bucket/ or a local dir; None: <state_dir>/artifacts
    s3_endpoint_url: str | None = None
    s3_credentials: S3Credentials | None = None
    auth: AuthSettings | None = None
    host: str = LOOPBACK
    workers: int = 1
    enable_jobs: bool = False  # MLflow's GenAI job runner: 8 extra processes we do not use
    # Fernet key MLflow encrypts stored webhook secrets with (stack.webhook); None: one per process,
    # which a restart (or a second worker) cannot decrypt.
    webhook_encryption_key: str | None = field(default=None, repr=False)
    webhook_cache_ttl_s: int = 5  # how soon a new or changed webhook is seen (MLflow's default: 60 s)

    def __post_init__(self) -> None:
        validate_backend_store_uri(self.backend_store_uri)
        if not 1 <= self.port <= 65535:
            raise StackError(f"MLflow port {self.port} is out of range: pass a port in 1..65535")
        if self.workers < 1:
            raise StackError(f"MLflow workers={self.workers}: pass at least 1")
        if (self.artifacts_destination or "").startswith("s3://") and not self.s3_credentials:
            raise StackError(
                "S3 artifacts need S3 keys for the server: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def validate_backend_store_uri(uri: str) -> str:
    """Accept a SQL database URI (SQLite or PostgreSQL for us); name the fix otherwise.

    Raises:
        StackError: a file store path or an unknown scheme, or a missing database driver.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme not in _SQL_SCHEMES:
        raise StackError(
            f"Backend store {mask_url(uri)!r} is not a database URI (MLflow >= 3.13 refuses the file store): "
            f"use sqlite:///<abs path>/mlflow.db or postgresql://user@host:5432/mlflow"
        )
    if scheme == "postgresql" and not (importlib.util.find_spec("psycopg2") or importlib.util.find_spec("psycopg")):
        raise StackError(f"Backend store {mask_url(uri)!r} needs a PostgreSQL driver: `pip install psycopg2-binary`")
    return uri


def mlflow_command(config: MlflowServerConfig) -> tuple[str, ...]:
    """The ``mlflow server`` command line; the backend URI (it may hold a password) goes in the env."""
    if importlib.util.find_spec("mlflow") is None:
        raise BinaryNotFoundError(f"MLflow is not installed in {sys.executable}: `pip install 'mlflow[auth]>=3.13'`")
    artifacts = config.artifacts_destination or str(config.state_dir / "artifacts")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", config.host,
        "--port", str(config.port),
        "--workers", str(config.workers),
        "--serve-artifacts",
        "--artifacts-destination", artifacts,
    ]
    if config.auth is not None:
        command += ["--app-name", "basic-auth"]
    return tuple(command)


def mlflow_env(config: MlflowServerConfig, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: backend URI, S3 endpoint and keys, auth secrets (never written to disk)."""
    overrides: dict[str, str | None] = {
        "MLFLOW_BACKEND_STORE_URI": config.backend_store_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if config.enable_jobs else "false",
        # A client-side variable leaking in from the caller would point the server at itself.
        "MLFLOW_TRACKING_URI": None,
        "MLFLOW_AUTH_ADMIN_USERNAME": None,
        "MLFLOW_AUTH_ADMIN_PASSWORD": None,
        "MLFLOW_AUTH_CONFIG_PATH": None,
        # Registry webhooks to the deploy controller on this machine: plain http to a loopback address.
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": str(config.webhook_cache_ttl_s),
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": config.webhook_encryption_key,
    }
    if config.s3_endpoint_url:
        overrides["MLFLOW_S3_ENDPOINT_URL"] = config.s3_endpoint_url
    if config.s3_credentials is not None:
        overrides[ACCESS_KEY_ENV] = config.s3_credentials.access_key
        overrides[SECRET_KEY_ENV] = config.s3_credentials.secret_key
        overrides["AWS_SESSION_TOKEN"] = None
    if config.auth is not None:
        overrides["MLFLOW_AUTH_CONFIG_PATH"] = str(config.auth.config_path)
        overrides["MLFLOW_AUTH_ADMIN_USERNAME"] = config.auth.admin_username
        overrides["MLFLOW_AUTH_ADMIN_PASSWORD"] = config.auth.admin_password
        overrides["MLFLOW_FLASK_SERVER_SECRET_KEY"] = config.auth.flask_secret_key
    return child_env(base_env, overrides)


def mlflow_spec(config: MlflowServerConfig, *, log_path: Path, base_env: Mapping[str, str] | None = None) -> ServerSpec:
    """How to run ``config``; the pid file will record only public facts (URL, auth on/off)."""
    return ServerSpec(
        name="mlflow",
        command=mlflow_command(config),
        env=mlflow_env(config, base_env),
        log_path=log_path,
        health_url=f"{config.url}/health",
        cwd=config.state_dir,
        urls={"tracking": config.url},
        info={
            "port": config.port,
            "auth": config.auth is not None,
            "admin_username": config.auth.admin_username if config.auth else None,
            "s3_endpoint_url": config.s3_endpoint_url,
            "artifacts_destination": config.artifacts_destination,
            "backend_store_uri": mask_url(config.backend_store_uri),
        },
    )


def start_mlflow_server(
    config: MlflowServerConfig,
    *,
    pid_path: Path,
    log_path: Path,
    timeout_s: float = 90.0,
    base_env: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start ``mlflow server`` and wait for ``/health``.

    Raises:
        StartupError: it exited or stayed unhealthy (the message names the log).
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if config.auth is not None:
        write_auth_config(config.auth)
    return start_server(mlflow_spec(config, log_path=log_path, base_env=base_env), pid_path, timeout_s=timeout_s)
