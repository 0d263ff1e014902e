"""One ``stack up --auth`` shared by the module: idempotence, keys, passwords, permissions, S3 artifacts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeqat.cli import main
from edgeqat.stack.processes import ProcessRecord, http_status
from edgeqat.stack.s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, S3Credentials, make_s3_client
from edgeqat.stack.stack import StackConfig, StackInfo, read_stack_env, stack_down, stack_up

pytestmark = pytest.mark.integration

_CLIENT_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "EDGEQAT_ADMIN_PASSWORD",
                "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class RunningStack:
    home: Path
    info: StackInfo
    echoed: tuple[str, ...]
    admin_password: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    home = tmp_path_factory.mktemp("stack-auth") / ".edgeqat"
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARS}  # keys and password: the defaults
    echoed: list[str] = []
    try:
        info = stack_up(StackConfig(home=home, mlflow_port=0, s3_port=0, auth=True), env=env, echo=echoed.append)
        password = (home / "secrets" / "admin_password").read_text().strip()
        yield RunningStack(home, info, tuple(echoed), password)
    finally:
        stack_down(home, echo=lambda _: None)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _CLIENT_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def as_admin(stack: RunningStack, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.admin_password)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return stack.info.tracking_uri


def _pids(home: Path) -> dict[str, int]:
    return {p.stem: ProcessRecord.from_json(p.read_text()).pid for p in (home / "run").glob("*.json")}


def _up(capsys: pytest.CaptureFixture[str], home: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["stack", "up", "--home", str(home), *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_second_up_is_a_no_op(stack: RunningStack, capsys: pytest.CaptureFixture[str]) -> None:
    before = _pids(stack.home)
    env_before = (stack.home / "stack.env").stat().st_mtime_ns
    rc, out, err = _up(capsys, stack.home, "--auth")
    assert rc == 0, err
    assert "SeaweedFS already running" in out and "MLflow already running" in out
    assert "Generated" not in out, "the admin password is shown only when it is generated"
    assert _pids(stack.home) == before
    assert (stack.home / "stack.env").stat().st_mtime_ns == env_before


def test_generated_password_is_shown_once_and_kept_only_in_a_0600_file(stack: RunningStack) -> None:
    shown = [line for line in stack.echoed if stack.admin_password in line]
    assert len(shown) == 1 and "Generated" in shown[0]
    secret_file = stack.home / "secrets" / "admin_password"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert (stack.home / "secrets").stat().st_mode & 0o777 == 0o700
    leaks = [p for p in stack.home.rglob("*") if p.is_file() and p.parent.name != "secrets"
             and stack.admin_password.encode() in p.read_bytes()]
    assert not leaks, f"admin password written to {leaks}"


def test_stack_env_holds_endpoints_and_no_secret(stack: RunningStack) -> None:
    env = read_stack_env(stack.home)
    assert env == {"MLFLOW_TRACKING_URI": stack.info.tracking_uri, "MLFLOW_S3_ENDPOINT_URL": stack.info.s3_endpoint_url}
    text = (stack.home / "stack.env").read_text()
    assert LOCAL_SECRET_KEY not in text and stack.admin_password not in text
    assert "PASSWORD=" not in text and "SECRET" not in text.upper().split("#")[-1]


def test_wrong_s3_keys_fail_up_with_one_line(stack: RunningStack, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-seaweedfs-knows")
    before = _pids(stack.home)
    rc, _, err = _up(capsys, stack.home)
    assert rc == 2
    assert err.count("\n") == 1
    assert "rejects the S3 keys" in err and "AWS_ACCESS_KEY_ID" in err and "stack down" in err
    assert "not-the-secret-seaweedfs-knows" not in err
    assert _pids(stack.home) == before, "a refused up must not touch the running stack"


def test_wrong_admin_password_fails_up(stack: RunningStack, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEQAT_ADMIN_PASSWORD", "a-different-password-123")
    rc, _, err = _up(capsys, stack.home, "--auth")
    assert rc == 2
    assert "rejects the password for admin user 'admin'" in err and "EDGEQAT_ADMIN_PASSWORD" in err
    assert "a-different-password-123" not in err

    monkeypatch.setenv("EDGEQAT_ADMIN_PASSWORD", "short")
    rc, _, err = _up(capsys, stack.home, "--auth")
    assert rc == 2 and "at least 12" in err


def test_anonymous_request_gets_401(stack: RunningStack) -> None:
    url = f"{stack.info.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(url) == 401
    assert http_status(url, auth=("admin", "wrong-password-000")) == 401
    assert http_status(url, auth=("admin", stack.admin_password)) == 200


def test_read_only_user_cannot_register_a_model_version(stack: RunningStack, as_admin: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    users = get_app_client("basic-auth", tracking_uri=as_admin)
    users.create_user("reader", "reader-password-123")
    admin = MlflowClient(as_admin)
    admin.create_registered_model("edgeqat-auth-model")
    run = admin.create_run(admin.create_experiment("auth-test"))
    admin.create_model_version("edgeqat-auth-model", f"runs:/{run.info.run_id}/model", run.info.run_id)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-password-123")
    reader = MlflowClient(as_admin)
    assert reader.get_registered_model("edgeqat-auth-model").name == "edgeqat-auth-model"  # READ works
    with pytest.raises(MlflowException) as denied:
        reader.create_model_version("edgeqat-auth-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert denied.value.get_http_status_code() == 403
    with pytest.raises(MlflowException) as denied:
        reader.set_registered_model_alias("edgeqat-auth-model", "champion", "1")
    assert denied.value.get_http_status_code() == 403


def test_run_artifacts_are_objects_in_the_seaweedfs_bucket(stack: RunningStack, as_admin: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(as_admin)
    run = client.create_run(client.create_experiment("artifacts-in-s3"))
    payload = tmp_path / "model.onnx"
    payload.write_bytes(os.urandom(300_000))
    client.log_artifact(run.info.run_id, str(payload), "int8")

    s3 = make_s3_client(stack.info.s3_endpoint_url, S3Credentials(LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="edgeqat-artifacts")["Contents"]]
    key = next(k for k in keys if run.info.run_id in k and k.endswith("int8/model.onnx"))
    body = s3.get_object(Bucket="edgeqat-artifacts", Key=key)["Body"].read()
    downloaded = Path(client.download_artifacts(run.info.run_id, "int8/model.onnx", str(tmp_path / "dl")))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    assert hashlib.sha256(body).hexdigest() == digest
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == digest


def test_lost_password_file_is_not_silently_replaced(stack: RunningStack, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = stack.home / "secrets" / "admin_password"
    kept = secret_file.read_text()
    secret_file.unlink()
    try:
        rc, out, err = _up(capsys, stack.home)
        assert rc == 2
        assert "no password for it is known" in err and "EDGEQAT_ADMIN_PASSWORD" in err
        assert not secret_file.exists(), "a new password would not match the existing admin user"
        assert "Generated" not in out
    finally:
        secret_file.write_text(kept)
        secret_file.chmod(0o600)
