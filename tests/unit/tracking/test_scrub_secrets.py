"""``scrub_secrets``: pure functions, no server."""

from __future__ import annotations

from collections.abc import MutableMapping

import pytest
from omegaconf import DictConfig, OmegaConf

from edgeqat.tracking.secrets import MASK, looks_secret, mask_url, scrub_secrets, secret_values_from_env


@pytest.mark.parametrize("key", [
    "password", "admin_password", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "aws_access_key_id",
    "secretKey", "api_key", "apiKey", "token", "hf_token", "webhook_secret", "private_key", "credentials",
    "Authorization", "sentry_dsn", "hmac_key",
])
def test_secret_keys(key: str) -> None:
    assert looks_secret(key)


@pytest.mark.parametrize("key", [
    "name", "key", "sort_key", "monitor", "max_tokens", "num_tokens", "tokenizer", "password_file",
    "token_env", "secret_name", "auth", "PWD", "backend_store_uri", "keys", "TOKENIZERS_PARALLELISM",
])
def test_innocent_keys(key: str) -> None:
    assert not looks_secret(key)


def test_nested_mapping_keeps_shape_and_masks_secrets() -> None:
    config = {
        "model": {"name": "resnet18"},
        "tracking": {"tracking_uri": "http://admin:hunter2hunter2@127.0.0.1:5000", "password": "p" * 14},
        "deploy": {"webhook_secret": "s" * 32, "credentials": {"user": "bob", "token": "t" * 20}, "unset_token": None},
        "list": [{"api_key": "abc"}, "plain"],
        "seed": 42,
    }
    out = scrub_secrets(config, env={})
    assert out["model"]["name"] == "resnet18" and out["seed"] == 42 and out["list"][1] == "plain"
    assert out["tracking"]["tracking_uri"] == f"http://admin:{MASK}@127.0.0.1:5000"
    assert out["tracking"]["password"] == MASK
    assert out["deploy"]["webhook_secret"] == MASK
    assert out["deploy"]["credentials"] == {"user": MASK, "token": MASK}
    assert out["deploy"]["unset_token"] is None
    assert out["list"][0]["api_key"] == MASK
    assert config["tracking"]["password"] == "p" * 14, "the input is not modified"


def test_values_of_secret_env_vars_are_masked_anywhere() -> None:
    env = {"EDGEQAT_ADMIN_PASSWORD": "correct-horse-battery", "HOME": "/root", "PWD": "/work/main"}
    out = scrub_secrets({"note": "login with correct-horse-battery", "dir": "/work/main/x"}, env=env)
    assert out == {"note": f"login with {MASK}", "dir": "/work/main/x"}
    assert scrub_secrets({"x": "v"}, extra_secrets=["v"], env={}) == {"x": MASK}


def test_dictconfig_in_dictconfig_out_with_interpolations_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_DB_PASSWORD", "s3cr3t-value-xyz")
    cfg = OmegaConf.create({
        "db": {"uri": "postgresql://u:${oc.env:MY_DB_PASSWORD}@db:5432/mlflow"},
        "model": {"name": "mobilenetv3"},
        "missing": "???",
    })
    out = scrub_secrets(cfg)
    assert isinstance(out, DictConfig)
    assert out.db.uri == f"postgresql://u:{MASK}@db:5432/mlflow"
    assert out.model.name == "mobilenetv3"


def test_presigned_url_signature_is_masked() -> None:
    url = "http://127.0.0.1:8333/b/k?X-Amz-Credential=AKIA%2F&X-Amz-Signature=deadbeef&partNumber=1"
    assert mask_url(url) == f"http://127.0.0.1:8333/b/k?X-Amz-Credential={MASK}&X-Amz-Signature={MASK}&partNumber=1"


class _VanishingEnviron(MutableMapping):
    """``os.environ`` as another thread changes it: a listed variable is gone by the time it is read."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def __iter__(self):
        yield from self.values
        yield "_MLFLOW_TELEMETRY_SESSION_ID"  # MLflow's telemetry thread unsets it mid-iteration

    def __len__(self) -> int:
        return len(self.values) + 1

    def __getitem__(self, key: str) -> str:
        return self.values[key]  # KeyError for the vanished one, as os.environ raises

    def __setitem__(self, key: str, value: str) -> None:  # what other fixtures' teardown may do meanwhile
        self.values[key] = value

    def __delitem__(self, key: str) -> None:
        del self.values[key]


def test_a_variable_unset_by_another_thread_mid_scan_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in a sweep job under submitit: KeyError from os.environ.items() while logging the config.
    import os

    monkeypatch.setattr(os, "environ", _VanishingEnviron({"MY_API_TOKEN": "s3cr3t-value-123", "HOME": "/root"}))
    assert secret_values_from_env() == frozenset({"s3cr3t-value-123"})
