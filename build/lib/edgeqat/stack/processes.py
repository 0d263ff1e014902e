"""Process plumbing shared by ``edgeqat stack`` and the test fixtures: ports, pid files, health.

Each server runs in a session (process group) of its own, so stopping it also stops every worker it
forked, and nothing else. A pid file records the pid with the kernel's start time of that process,
so a pid the system reused for an unrelated program is recognised as stale and never signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edgeqat.stack.errors import PortInUseError, StartupError

LOOPBACK = "127.0.0.1"
_POLL_S = 0.2


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports free right now on ``host`` (held together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    """One port free right now on ``host``."""
    return free_ports(1, host)[0]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as the servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ensure_port_free(host: str, port: int, *, service: str, fix: str, grace_s: float = 0.0) -> None:
    """Raise :class:`PortInUseError` naming ``service`` and ``fix`` if ``host:port`` is taken.

    ``grace_s``: for a port our own crashed server held, wait that long for the kernel to release it
    (a killed process's children and sockets outlive its pid for a moment on a busy machine).
    """
    if not wait_port_free(host, port, grace_s):
        raise PortInUseError(f"Port {port} on {host} (wanted by {service}) is already in use by another process: {fix}")


def wait_port_free(host: str, port: int, timeout_s: float) -> bool:
    """Wait until ``host:port`` can be bound again (a stopped server's socket may linger briefly)."""
    deadline = time.monotonic() + timeout_s
    while not port_is_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def http_status(url: str, *, timeout_s: float = 2.0, auth: tuple[str, str] | None = None) -> int | None:
    """The HTTP status of ``GET url``, or ``None`` when nothing answers."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file holds: enough to find, check and stop one server, and no secrets."""

    name: str
    pid: int
    start_ticks: int | None  # kernel start time of ``pid``; tells our process from a reused pid
    command: tuple[str, ...]
    log_path: str
    health_url: str
    urls: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # ports, auth flag, endpoints: public facts only

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ProcessRecord:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # a newer edgeqat may add fields
        data["command"] = tuple(data.get("command", ()))
        return cls(**data)


class PidState(Enum):
    """What a pid file says about its server."""

    MISSING = "missing"  # no pid file: never started, or stopped cleanly
    RUNNING = "running"  # the recorded process is alive (health not checked)
    STALE = "stale"  # a pid file whose process is gone (crash, reboot, kill -9)


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing ')'.
    return text[text.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot), or ``None`` where /proc is absent."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child that exited, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):  # not our child: init reaps it
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, given ``start_ticks``, is the same process."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _proc_stat(pid)
    if fields is None:
        return not Path("/proc").is_dir()  # no /proc (macOS): trust kill(0)
    if fields[0] == "Z":
        return False
    return start_ticks is None or int(fields[19]) == start_ticks


def read_pid_file(path: Path) -> tuple[PidState, ProcessRecord | None]:
    """The state of the server behind ``path``, with its record when there is one.

    An unreadable pid file counts as stale: it cannot name a process we could safely stop.
    """
    if not path.exists():
        return PidState.MISSING, None
    try:
        record = ProcessRecord.from_json(path.read_text())
    except (OSError, ValueError, TypeError):
        return PidState.STALE, None
    if pid_alive(record.pid, record.start_ticks):
        return PidState.RUNNING, record
    return PidState.STALE, record


def remove_stale_pid_file(path: Path, record: ProcessRecord | None) -> str:
    """Delete a stale pid file; returns the one-line message to show the user."""
    path.unlink(missing_ok=True)
    who = f"pid {record.pid} is no longer running" if record else "it could not be read"
    return f"Removed stale pid file {path} ({who})."


def write_pid_file(path: Path, record: ProcessRecord) -> None:
    """Write ``record`` atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(record.to_json())
    os.replace(tmp, path)


def last_log_line(log_path: Path, *, limit: int = 300) -> str:
    """The last non-empty line of a server log (what most often names the failure)."""
    try:
        with log_path.open("rb") as f:
            f.seek(max(0, log_path.stat().st_size - 16384))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:limit] if lines else "(empty log)"


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server: the command, its full environment (may hold secrets), its log."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    log_path: Path
    health_url: str
    cwd: Path | None = None
    urls: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def wait_until_healthy(
    url: str,
    *,
    timeout_s: float,
    alive: Callable[[], bool],
    service: str,
    log_path: Path,
) -> None:
    """Poll ``url`` until it answers 2xx; fail fast when the process dies.

    Raises:
        StartupError: the process exited, or ``url`` stayed unhealthy for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        status = http_status(url, timeout_s=2.0)
        if status is not None and 200 <= status < 300:
            return
        if not alive():
            raise StartupError(f"{service} exited while starting: {last_log_line(log_path)} (full log: {log_path})")
        if time.monotonic() > deadline:
            raise StartupError(
                f"{service} did not become healthy at {url} within {timeout_s:.0f}s (last log line: "
                f"{last_log_line(log_path)}); see {log_path}, or give it longer with --timeout"
            )
        time.sleep(_POLL_S)


def start_server(spec: ServerSpec, pid_path: Path, *, timeout_s: float) -> ProcessRecord:
    """Spawn ``spec`` in its own process group, wait until healthy, then write its pid file.

    On failure the half-started process group is stopped before the error propagates.

    Raises:
        StartupError: it exited or stayed unhealthy (the message names the log file).
    """
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    with spec.log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {spec.name}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(spec.command),
            env=dict(spec.env),
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own: stop() reaches its workers
        )
    record = ProcessRecord(
        name=spec.name,
        pid=proc.pid,
        start_ticks=process_start_ticks(proc.pid),
        command=spec.command,
        log_path=str(spec.log_path),
        health_url=spec.health_url,
        urls=dict(spec.urls),
        info=dict(spec.info),
    )
    try:
        wait_until_healthy(
            spec.health_url, timeout_s=timeout_s, alive=lambda: proc.poll() is None,
            service=spec.name, log_path=spec.log_path,
        )
    except BaseException:
        stop_process_group(record, timeout_s=10.0)
        raise
    write_pid_file(pid_path, record)
    return record


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(record: ProcessRecord, *, timeout_s: float = 20.0) -> bool:
    """SIGTERM the server's process group, SIGKILL what is left after ``timeout_s``.

    Returns whether anything was running. Signals only a group led by the recorded process.
    """
    if not pid_alive(record.pid, record.start_ticks):
        return False
    try:
        own_group = os.getpgid(record.pid) == record.pid
    except ProcessLookupError:
        return False
    send: Callable[[int], None] = (
        (lambda sig: os.killpg(record.pid, sig)) if own_group else (lambda sig: os.kill(record.pid, sig))
    )

    def gone() -> bool:
        _reap(record.pid)
        return not (_group_alive(record.pid) if own_group else pid_alive(record.pid, record.start_ticks))

    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            send(sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if gone():
                return True
            time.sleep(_POLL_S)
    return True


def stop_server(pid_path: Path, *, timeout_s: float = 20.0) -> tuple[bool, str | None]:
    """Stop the server behind ``pid_path`` and remove the file.

    Returns ``(stopped, message)``: ``stopped`` when a live process was stopped; ``message`` is set
    when a stale pid file was cleaned instead.
    """
    state, record = read_pid_file(pid_path)
    if state is PidState.MISSING:
        return False, None
    if state is PidState.STALE:
        return False, remove_stale_pid_file(pid_path, record)
    assert record is not None
    stop_process_group(record, timeout_s=timeout_s)
    pid_path.unlink(missing_ok=True)
    return True, None


def child_env(base: Mapping[str, str] | None, overrides: Mapping[str, str | None]) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``overrides``; ``None`` removes a key."""
    env = dict(os.environ if base is None else base)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env

