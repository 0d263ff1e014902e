"""The registry webhook that drives the deploy controller: its secret, and its registration on the server.

Two secrets, both generated once and kept 0600 under ``<home>/secrets`` (never logged, never in
``stack.env``): the HMAC secret MLflow signs deliveries with (the controller verifies them), and the
Fernet key MLflow encrypts stored webhook secrets with. Without a fixed Fernet key every MLflow
process invents its own (``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY``), and a restarted server can no
longer read the secret it stored.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from edgeqat.stack.auth import read_secret_file, write_secret_file

WEBHOOK_SECRET_FILE = "webhook_secret"
ENCRYPTION_KEY_FILE = "webhook_encryption_key"
WEBHOOK_NAME = "edgeqat-deploy"
DEFAULT_DEPLOY_PORT = 8765
EVENTS = ("model_version.created", "model_version_tag.set", "model_version_alias.created",
          "model_version_alias.deleted")


def _load_or_create(path: Path, make: callable) -> str:  # type: ignore[valid-type]
    value = read_secret_file(path)
    if value is None:
        value = make()
        write_secret_file(path, value)
    return value


def load_webhook_secret(secrets_dir: Path) -> str:
    """The HMAC secret shared by the MLflow server (it signs) and ``edgeqat deploy serve`` (it verifies)."""
    return _load_or_create(secrets_dir / WEBHOOK_SECRET_FILE, lambda: secrets.token_urlsafe(32))


def load_encryption_key(secrets_dir: Path) -> str:
    """The Fernet key MLflow encrypts webhook secrets with in its database."""
    return _load_or_create(secrets_dir / ENCRYPTION_KEY_FILE,
                           lambda: base64.urlsafe_b64encode(os.urandom(32)).decode())


def deploy_webhook_url(port: int = DEFAULT_DEPLOY_PORT, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/webhook"


@contextlib.contextmanager
def _login(username: str | None, password: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    if username and password:
        os.environ.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register_deploy_webhook(tracking_uri: str, url: str, secret: str, *, username: str | None = None,
                            password: str | None = None) -> str:
    """Create (or point and re-key) the ``edgeqat-deploy`` webhook; returns its id. Idempotent."""
    from mlflow.tracking import MlflowClient

    with _login(username, password):
        client = MlflowClient(tracking_uri)
        existing = [w for w in client.list_webhooks() if w.name == WEBHOOK_NAME]
        if existing:
            client.update_webhook(existing[0].webhook_id, url=url, events=list(EVENTS), secret=secret,
                                  status="ACTIVE")
            return existing[0].webhook_id
        hook = client.create_webhook(WEBHOOK_NAME, url, list(EVENTS), secret=secret,
                                     description="edgeqat deploy controller (edgeqat deploy serve)")
        return hook.webhook_id
