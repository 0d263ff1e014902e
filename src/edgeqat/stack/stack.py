"""``edgeqat stack up | down | status``: SeaweedFS (S3) + MLflow server for local work, under ``<home>``.

Layout of ``<home>`` (default ``./.edgeqat``)::

    stack.env            MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL for clients (never a secret)
    run/<server>.json    pid files: pid, kernel start time, ports, URLs
    logs/<server>.log    server output
    seaweedfs/           object data (buckets edgeqat-artifacts, edgeqat-data)
    mlflow/              mlflow.db (default backend store), basic_auth.ini/.db with --auth
    secrets/             mode 0700: admin_password, flask_secret_key (each 0600)

``up`` is idempotent: healthy servers are left alone, missing ones started, stale pid files cleaned;
a server restarted after a crash gets the port it had (from ``stack.env``) unless told otherwise.
Everything is checked (ports, keys, binary, password) before anything starts, and what one ``up``
started is stopped again if a later step fails, so a failed ``up`` leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edgeqat.stack.auth import (
    DEFAULT_ADMIN_USERNAME,
    AdminPassword,
    AuthSettings,
    check_admin_login,
    load_flask_secret_key,
    resolve_admin_password,
)
from edgeqat.stack.errors import StackError
from edgeqat.stack.mlflow_server import (
    DEFAULT_MLFLOW_PORT,
    MlflowServerConfig,
    start_mlflow_server,
    validate_backend_store_uri,
)
from edgeqat.stack.processes import (
    LOOPBACK,
    PidState,
    ProcessRecord,
    ensure_port_free,
    free_port,
    http_status,
    read_pid_file,
    remove_stale_pid_file,
    stop_server,
)
from edgeqat.stack.s3 import S3Credentials, credentials_from_env
from edgeqat.stack.webhook import (
    DEFAULT_DEPLOY_PORT,
    deploy_webhook_url,
    load_encryption_key,
    load_webhook_secret,
    register_deploy_webhook,
)
from edgeqat.stack.seaweed import (
    DEFAULT_BUCKETS,
    DEFAULT_S3_PORT,
    SeaweedConfig,
    SeaweedPorts,
    check_credentials,
    ensure_buckets,
    find_weed_binary,
    s3_healthy,
    start_seaweedfs,
)

Echo = Callable[[str], None]
SERVICES = ("seaweedfs", "mlflow")  # start order; stopped in reverse
ATTACHED = ("deploy",)  # started beside the stack (`edgeqat demo`'s deploy controller); stopped first
ARTIFACTS_BUCKET = "edgeqat-artifacts"
_OWN_PORT_GRACE_S = 15.0  # how long a port our own crashed server held may take to be released


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps each of its files under ``home``."""

    home: Path

    @classmethod
    def at(cls, home: Path | str) -> StackPaths:
        return cls(Path(home).expanduser().absolute())

    @property
    def env_file(self) -> Path:
        return self.home / "stack.env"

    @property
    def seaweed_dir(self) -> Path:
        return self.home / "seaweedfs"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    def pid(self, service: str) -> Path:
        return self.home / "run" / f"{service}.json"

    def log(self, service: str) -> Path:
        return self.home / "logs" / f"{service}.log"


@dataclass(frozen=True)
class StackConfig:
    """What ``stack up`` should run. Ports: ``None`` = default (or the running one), ``0`` = any free."""

    home: Path = Path(".edgeqat")
    mlflow_port: int | None = None
    s3_port: int | None = None
    backend_store_uri: str | None = None  # None: SQLite under <home>/mlflow/
    auth: bool = False
    admin_username: str = DEFAULT_ADMIN_USERNAME
    default_permission: str = "READ"
    buckets: tuple[str, ...] = DEFAULT_BUCKETS
    timeout_s: float = 90.0
    workers: int = 1
    weed_binary: str | None = None
    deploy_webhook: bool = True  # register the registry webhook of `edgeqat deploy serve`
    deploy_port: int = DEFAULT_DEPLOY_PORT

    def __post_init__(self) -> None:
        for flag, port in (("--mlflow-port", self.mlflow_port), ("--s3-port", self.s3_port)):
            if port is not None and not 0 <= port <= 65535:
                raise StackError(f"{flag} {port} is out of range: pass 1..65535, or 0 for a free port")
        if self.mlflow_port and self.mlflow_port == self.s3_port:
            raise StackError(f"--mlflow-port and --s3-port are both {self.mlflow_port}: give them different ports")
        if self.timeout_s <= 0:
            raise StackError(f"--timeout {self.timeout_s} must be positive (seconds to wait for each server)")
        if self.workers < 1:
            raise StackError(f"--workers {self.workers} must be at least 1")
        if ARTIFACTS_BUCKET not in self.buckets:
            raise StackError(f"buckets {self.buckets} must include {ARTIFACTS_BUCKET!r} (MLflow's artifact store)")


@dataclass(frozen=True)
class StackInfo:
    """What ``stack up`` left running (public facts only)."""

    tracking_uri: str
    s3_endpoint_url: str
    env_file: Path
    started: tuple[str, ...]
    already_running: tuple[str, ...]
    auth: bool
    admin_username: str | None = None
    admin_password_source: str | None = None  # ADMIN_PASSWORD_ENV or the 0600 file that holds it


@dataclass(frozen=True)
class ServiceStatus:
    """One server as ``stack status`` sees it."""

    name: str
    state: str  # "running" | "unhealthy" | "stopped"
    pid: int | None = None
    url: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class StackStatus:
    """All servers; :attr:`exit_code` follows LSB ``status``: 0 running, 3 stopped, 1 degraded."""

    services: tuple[ServiceStatus, ...]
    messages: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        states = {s.state for s in self.services}
        if states == {"running"}:
            return 0
        if states == {"stopped"}:
            return 3
        return 1


def _quiet(_: str) -> None:
    pass


def _live_record(paths: StackPaths, service: str, echo: Echo) -> ProcessRecord | None:
    """The record of a running server; a stale pid file is removed with a message."""
    state, record = read_pid_file(paths.pid(service))
    if state is PidState.STALE:
        echo(remove_stale_pid_file(paths.pid(service), record))
        return None
    return record if state is PidState.RUNNING else None


def _port_of(url: str | None) -> int | None:
    try:
        return urlparse(url).port if url else None
    except ValueError:  # a hand-edited stack.env
        return None


def render_stack_env(tracking_uri: str, s3_endpoint_url: str) -> str:
    """The client environment file; it must never hold a secret (it is meant to be sourced and shared)."""
    return (
        "# Written by `edgeqat stack up`; load with: set -a; . .edgeqat/stack.env; set +a\n"
        "# No secrets here: S3 keys come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the local stack's\n"
        "# documented defaults when unset), MLflow logins from MLFLOW_TRACKING_USERNAME/PASSWORD.\n"
        f"MLFLOW_TRACKING_URI={tracking_uri}\n"
        f"MLFLOW_S3_ENDPOINT_URL={s3_endpoint_url}\n"
    )


def read_stack_env(home: Path | str = ".edgeqat") -> dict[str, str]:
    """The variables of ``<home>/stack.env`` (empty when the stack is down)."""
    path = StackPaths.at(home).env_file
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _check_running_seaweed(record: ProcessRecord, config: StackConfig, creds: S3Credentials) -> str:
    endpoint = record.urls["s3"]
    if config.s3_port and config.s3_port != _port_of(endpoint):
        raise StackError(
            f"SeaweedFS already runs from {config.home} with S3 at {endpoint}, not port {config.s3_port}: "
            f"`edgeqat stack down` first to move it"
        )
    if not s3_healthy(endpoint):
        raise StackError(
            f"SeaweedFS (pid {record.pid}) runs but its S3 gateway at {endpoint} is not healthy (see "
            f"{record.log_path}): `edgeqat stack down` and `edgeqat stack up` again"
        )
    check_credentials(endpoint, creds)
    return endpoint


def _check_running_mlflow(record: ProcessRecord, config: StackConfig, s3_endpoint: str | None) -> None:
    url = record.urls["tracking"]
    if config.mlflow_port and config.mlflow_port != _port_of(url):
        raise StackError(
            f"MLflow already runs from {config.home} at {url}, not port {config.mlflow_port}: "
            f"`edgeqat stack down` first to move it"
        )
    if http_status(f"{url}/health") != 200:
        raise StackError(
            f"MLflow (pid {record.pid}) runs but {url}/health does not answer (see {record.log_path}): "
            f"`edgeqat stack down` and `edgeqat stack up` again"
        )
    if config.auth and not record.info.get("auth"):
        raise StackError(
            f"MLflow at {url} runs without authentication, but --auth was asked for: "
            f"`edgeqat stack down`, then `edgeqat stack up --auth`"
        )
    if s3_endpoint and record.info.get("s3_endpoint_url") != s3_endpoint:
        raise StackError(
            f"MLflow at {url} stores artifacts at {record.info.get('s3_endpoint_url')} but SeaweedFS now serves "
            f"{s3_endpoint}: `edgeqat stack down` and `edgeqat stack up` to restart both"
        )


def _resolve_port(wanted: int | None, default: int) -> int:
    if wanted is None:
        return default
    return wanted or free_port()


def _auth_settings(
    config: StackConfig, paths: StackPaths, env: Mapping[str, str], echo: Echo, *, running: ProcessRecord | None
) -> tuple[AuthSettings, AdminPassword]:
    users_db = paths.mlflow_dir / "basic_auth.db"
    existing = f"the server at {running.urls['tracking']}" if running else None
    if existing is None and users_db.exists():
        existing = str(users_db)
    password = resolve_admin_password(paths.secrets_dir, env, existing_users=existing)
    if password.generated:
        # Shown here, once, before anything can fail: the file keeps it; no log or env file does.
        echo(
            f"Generated the MLflow admin password for user {config.admin_username!r} (shown only now; stored in "
            f"{password.source}, mode 0600): {password.value}"
        )
    settings = AuthSettings(
        config_path=paths.mlflow_dir / "basic_auth.ini",
        database_uri=f"sqlite:///{users_db}",
        admin_password=password.value,
        flask_secret_key=load_flask_secret_key(paths.secrets_dir),
        admin_username=config.admin_username,
        default_permission=config.default_permission,
    )
    return settings, password


def stack_up(config: StackConfig, *, env: Mapping[str, str] | None = None, echo: Echo = print) -> StackInfo:
    """Start whatever part of the stack is not running; leave healthy servers alone.

    Args:
        config: ports, home, backend store, auth.
        env: environment to read keys/password from and pass to the servers (default ``os.environ``).
        echo: where progress lines go (the generated admin password is echoed once, nowhere else).

    Raises:
        StackError: a busy port, a missing binary, keys the running SeaweedFS rejects, a server that
            does not come up; one line each, naming the fix.
    """
    env = dict(os.environ if env is None else env)
    paths = StackPaths.at(config.home)
    for sub in (paths.home / "run", paths.home / "logs", paths.seaweed_dir, paths.mlflow_dir):
        sub.mkdir(parents=True, exist_ok=True)

    creds = credentials_from_env(env, allow_local_defaults=True)
    assert creds is not None
    backend = validate_backend_store_uri(config.backend_store_uri or f"sqlite:///{paths.mlflow_dir / 'mlflow.db'}")

    seaweed = _live_record(paths, "seaweedfs", echo)
    mlflow = _live_record(paths, "mlflow", echo)
    s3_endpoint = _check_running_seaweed(seaweed, config, creds) if seaweed else None
    if mlflow:
        _check_running_mlflow(mlflow, config, s3_endpoint)

    wants_auth = bool(mlflow.info.get("auth")) if mlflow else config.auth
    if mlflow is None and not wants_auth and (paths.mlflow_dir / "basic_auth.db").exists():
        echo(f"Note: starting MLflow without --auth although {paths.mlflow_dir / 'basic_auth.db'} holds users: "
             f"anyone on this machine can use it; `edgeqat stack down` and `up --auth` to require logins")
    auth, password = _auth_settings(config, paths, env, echo, running=mlflow) if wants_auth else (None, None)

    # After a crash, come back on the ports clients know (stack.env is removed only by `down`).
    previous = read_stack_env(paths.home)
    previous_s3 = _port_of(previous.get("MLFLOW_S3_ENDPOINT_URL"))
    previous_mlflow = _port_of(previous.get("MLFLOW_TRACKING_URI"))

    # Every check before the first start, so a busy port or missing binary leaves nothing running.
    if seaweed is None:
        find_weed_binary(config.weed_binary)
        running_s3 = _port_of(mlflow.info.get("s3_endpoint_url")) if mlflow else None
        default_s3 = running_s3 or previous_s3 or DEFAULT_S3_PORT
        s3_port = _resolve_port(config.s3_port, default_s3)
        if mlflow and s3_port != default_s3:
            raise StackError(
                f"MLflow (pid {mlflow.pid}) expects S3 on port {default_s3}, not {s3_port}: drop --s3-port, "
                f"or `edgeqat stack down` first"
            )
        ensure_port_free(LOOPBACK, s3_port, service="SeaweedFS S3",
                         fix="stop that process, or pass --s3-port N (0 picks a free port)",
                         grace_s=_OWN_PORT_GRACE_S if s3_port == previous_s3 else 0.0)
    if mlflow is None:
        mlflow_port = _resolve_port(config.mlflow_port, previous_mlflow or DEFAULT_MLFLOW_PORT)
        ensure_port_free(LOOPBACK, mlflow_port, service="MLflow server",
                         fix="stop that process, or pass --mlflow-port N (0 picks a free port)",
                         grace_s=_OWN_PORT_GRACE_S if mlflow_port == previous_mlflow else 0.0)
        if seaweed is None and mlflow_port == s3_port:
            raise StackError(f"MLflow and S3 would both use port {s3_port}: pass different --mlflow-port/--s3-port")

    started: list[str] = []
    try:
        if seaweed is None:
            if creds.source == "local defaults":
                echo("S3 keys: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are unset, so SeaweedFS uses the local "
                     "defaults (edgeqat.stack.s3.LOCAL_ACCESS_KEY/LOCAL_SECRET_KEY); edgeqat's S3 clients use "
                     "them for loopback endpoints")
            seaweed = start_seaweedfs(
                SeaweedConfig(paths.seaweed_dir, SeaweedPorts.pick(s3_port), creds, binary=config.weed_binary),
                pid_path=paths.pid("seaweedfs"), log_path=paths.log("seaweedfs"), buckets=config.buckets,
                timeout_s=config.timeout_s, base_env=env,
            )
            started.append("seaweedfs")
            echo(f"SeaweedFS started (pid {seaweed.pid}): S3 at {seaweed.urls['s3']}, "
                 f"buckets {', '.join(config.buckets)}")
        else:
            ensure_buckets(seaweed.urls["s3"], creds, config.buckets, timeout_s=config.timeout_s)
            echo(f"SeaweedFS already running (pid {seaweed.pid}): S3 at {seaweed.urls['s3']}")
        s3_endpoint = seaweed.urls["s3"]

        if mlflow is None:
            mlflow = start_mlflow_server(
                MlflowServerConfig(
                    port=mlflow_port, backend_store_uri=backend, state_dir=paths.mlflow_dir,
                    artifacts_destination=f"s3://{ARTIFACTS_BUCKET}/", s3_endpoint_url=s3_endpoint,
                    s3_credentials=creds, auth=auth, workers=config.workers,
                    webhook_encryption_key=load_encryption_key(paths.secrets_dir),
                ),
                pid_path=paths.pid("mlflow"), log_path=paths.log("mlflow"), timeout_s=config.timeout_s, base_env=env,
            )
            started.append("mlflow")
            echo(f"MLflow started (pid {mlflow.pid}): {mlflow.urls['tracking']}{' (basic auth)' if auth else ''}")
        else:
            echo(f"MLflow already running (pid {mlflow.pid}): {mlflow.urls['tracking']}"
                 f"{' (basic auth)' if mlflow.info.get('auth') else ''}")
        tracking_uri = mlflow.urls["tracking"]
        if auth is not None and password is not None:
            check_admin_login(tracking_uri, auth.admin_username, password.value, password_source=password.source)
        if config.deploy_webhook:
            register_deploy_webhook(tracking_uri, deploy_webhook_url(config.deploy_port),
                                    load_webhook_secret(paths.secrets_dir),
                                    username=auth.admin_username if auth else None,
                                    password=password.value if password else None)
            echo(f"Registry webhook -> {deploy_webhook_url(config.deploy_port)} (edgeqat deploy serve; "
                 f"secret in {paths.secrets_dir / 'webhook_secret'}, mode 0600)")
    except BaseException:
        for service in reversed(started):
            stop_server(paths.pid(service))
        raise

    content = render_stack_env(tracking_uri, s3_endpoint)
    if not paths.env_file.exists() or paths.env_file.read_text() != content:
        paths.env_file.write_text(content)
    return StackInfo(
        tracking_uri=tracking_uri,
        s3_endpoint_url=s3_endpoint,
        env_file=paths.env_file,
        started=tuple(started),
        already_running=tuple(s for s in SERVICES if s not in started),
        auth=auth is not None,
        admin_username=auth.admin_username if auth else None,
        admin_password_source=password.source if password else None,
    )


def stack_down(home: Path | str = ".edgeqat", *, timeout_s: float = 20.0, echo: Echo = print) -> tuple[str, ...]:
    """Stop the servers this stack started (found by their pid files), MLflow first.

    Returns the names of the servers stopped. Processes not started by ``stack up`` are never touched,
    and a stale pid file is removed with a message.
    """
    paths = StackPaths.at(home)
    stopped = []
    for service in (*ATTACHED, *reversed(SERVICES)):
        was_running, message = stop_server(paths.pid(service), timeout_s=timeout_s)
        if message:
            echo(message)
        if was_running:
            stopped.append(service)
            echo(f"Stopped {service}.")
    paths.env_file.unlink(missing_ok=True)
    if not stopped:
        echo(f"Nothing to stop: no stack server runs from {paths.home}.")
    return tuple(stopped)


def stack_status(home: Path | str = ".edgeqat", *, echo: Echo = _quiet) -> StackStatus:
    """Each server's state (health-checked); stale pid files are removed with a message."""
    paths = StackPaths.at(home)
    messages: list[str] = []

    def note(message: str) -> None:
        messages.append(message)
        echo(message)

    services = []
    for service in SERVICES:
        record = _live_record(paths, service, note)
        if record is None:
            services.append(ServiceStatus(service, "stopped"))
            continue
        url = record.urls.get("s3") or record.urls.get("tracking")
        healthy = http_status(record.health_url) == 200
        detail = "basic auth" if record.info.get("auth") else ""
        if not healthy:
            detail = f"no answer at {record.health_url}; see {record.log_path}"
        services.append(ServiceStatus(service, "running" if healthy else "unhealthy", record.pid, url, detail))
    return StackStatus(tuple(services), tuple(messages))
