"""Basic auth for the local MLflow server: admin password, Flask secret key, auth config file.

Secrets live only in the server's environment and in 0600 files under ``<home>/secrets/``. The ini
file MLflow reads (``MLFLOW_AUTH_CONFIG_PATH``) holds none of them, and neither do ``stack.env``,
pid files or logs. MLflow creates the admin user once, on the first start against an empty user
database, from ``MLFLOW_AUTH_ADMIN_PASSWORD``; later starts ignore that variable, so :func:`check_admin_login`
tells the user when the password they hold no longer matches.
"""

from __future__ import annotations

import configparser
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeqat.stack.errors import CredentialsError, StackError
from edgeqat.stack.processes import http_status

ADMIN_PASSWORD_ENV = "EDGEQAT_ADMIN_PASSWORD"
DEFAULT_ADMIN_USERNAME = "admin"
MIN_PASSWORD_LENGTH = 12  # MLflow's own rule (mlflow.utils.validation._validate_password)
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
ADMIN_PASSWORD_FILE = "admin_password"
FLASK_SECRET_FILE = "flask_secret_key"


@dataclass(frozen=True)
class AdminPassword:
    """The admin password and where it came from (``repr`` never shows the value)."""

    value: str = field(repr=False)
    source: str  # ADMIN_PASSWORD_ENV, or the path of the file it was read from / written to
    generated: bool = False  # True only on the call that created it: show it to the user once


@dataclass(frozen=True)
class AuthSettings:
    """Everything the basic-auth app needs; secrets are excluded from ``repr``."""

    config_path: Path  # the ini file written for MLFLOW_AUTH_CONFIG_PATH (no secrets in it)
    database_uri: str  # users and permissions (SQLite next to the tracking DB by default)
    admin_password: str = field(repr=False)
    flask_secret_key: str = field(repr=False)
    admin_username: str = DEFAULT_ADMIN_USERNAME
    default_permission: str = "READ"  # what every user may do on resources they do not own

    def __post_init__(self) -> None:
        if self.default_permission not in PERMISSIONS:
            raise StackError(
                f"Unknown MLflow permission {self.default_permission!r}; choose one of {', '.join(PERMISSIONS)}"
            )
        if not self.admin_username:
            raise StackError("The MLflow admin username must not be empty")
        check_password(self.admin_password, source="the admin password")


def check_password(password: str, *, source: str) -> None:
    """Apply MLflow's password rule here, so the error names our variable rather than MLflow's.

    Raises:
        StackError: shorter than MLflow accepts.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StackError(
            f"{source} has {len(password)} characters; MLflow requires at least {MIN_PASSWORD_LENGTH}: "
            f"set a longer {ADMIN_PASSWORD_ENV}, or unset it to have one generated"
        )


def write_secret_file(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` readable by the owner only (0600, in a 0700 folder), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)


def read_secret_file(path: Path) -> str | None:
    """The secret in ``path`` (``None`` if absent).

    Raises:
        StackError: others can read the file, or it is empty.
    """
    if not path.exists():
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise StackError(
            f"{path} is readable by others (mode {mode:o}): `chmod 600 {path}`, or delete it to regenerate"
        )
    value = path.read_text().strip()
    if not value:
        raise StackError(f"{path} is empty: delete it to have a new secret generated")
    return value


def resolve_admin_password(
    secrets_dir: Path, env: Mapping[str, str] | None = None, *, existing_users: str | None = None
) -> AdminPassword:
    """``$EDGEQAT_ADMIN_PASSWORD``, else the stored one, else a new one saved with mode 0600.

    Args:
        existing_users: where an admin user already exists (a running server, a user database);
            then a new password would be useless, so none is generated.

    Raises:
        StackError: the password from the environment is too short, the stored file is unsafe, or
            no password is known for an existing admin.
    """
    env = os.environ if env is None else env
    if env.get(ADMIN_PASSWORD_ENV):
        value = env[ADMIN_PASSWORD_ENV]
        check_password(value, source=ADMIN_PASSWORD_ENV)
        return AdminPassword(value, ADMIN_PASSWORD_ENV)
    path = secrets_dir / ADMIN_PASSWORD_FILE
    stored = read_secret_file(path)
    if stored is not None:
        return AdminPassword(stored, str(path))
    if existing_users:
        raise StackError(
            f"The MLflow admin user already exists ({existing_users}) but no password for it is known ({path} is "
            f"missing): set {ADMIN_PASSWORD_ENV} to it, or `edgeqat stack down` and delete {existing_users} to "
            f"start over (its users are lost)"
        )
    value = secrets.token_urlsafe(18)  # 24 characters
    write_secret_file(path, value)
    return AdminPassword(value, str(path), generated=True)


def load_flask_secret_key(secrets_dir: Path) -> str:
    """The Flask secret key that signs the UI's CSRF tokens; generated once and kept (0600)."""
    path = secrets_dir / FLASK_SECRET_FILE
    stored = read_secret_file(path)
    if stored is not None:
        return stored
    value = secrets.token_hex(32)
    write_secret_file(path, value)
    return value


def write_auth_config(settings: AuthSettings) -> Path:
    """Write the ini file MLflow's basic-auth app reads; it names no password (that is in the env)."""
    parser = configparser.ConfigParser()
    parser["mlflow"] = {
        "default_permission": settings.default_permission,
        "database_uri": settings.database_uri,
        "admin_username": settings.admin_username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    settings.config_path.parent.mkdir(parents=True, exist_ok=True)
    with settings.config_path.open("w") as f:
        f.write("# Written by edgeqat; the admin password is passed in the server's environment, not here.\n")
        parser.write(f)
    return settings.config_path


def check_admin_login(tracking_uri: str, username: str, password: str, *, password_source: str) -> None:
    """Fail with one line when the server does not accept the admin credentials we hold.

    Raises:
        CredentialsError: the admin user exists with another password (MLflow ignores the new one).
        StackError: the server does not answer as a basic-auth server.
    """
    url = f"{tracking_uri}/api/2.0/mlflow/users/get?username={username}"
    status = http_status(url, auth=(username, password), timeout_s=10.0)
    if status == 200:
        return
    if status == 401:
        raise CredentialsError(
            f"The MLflow server at {tracking_uri} rejects the password for admin user {username!r} from "
            f"{password_source}: that user already exists with another password (MLflow sets it only on the "
            f"first start); use the original password, or change it with "
            f"`mlflow.server.get_app_client('basic-auth', tracking_uri).update_user_password`"
        )
    raise StackError(
        f"The MLflow server at {tracking_uri} answered HTTP {status} to an admin login check: is it running with "
        f"--app-name basic-auth? Run `edgeqat stack down` and `edgeqat stack up --auth`"
    )
