"""The receiver accepts exactly what MLflow signs, and nothing stale, forged or unsigned."""

from __future__ import annotations

import time

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from edgeqat.deploy.webhook import MAX_AGE_S, check_signature, sign

BODY = b'{"entity": "model_version_alias", "action": "created", "data": {"name": "m", "alias": "production"}}'


def _headers(secret: str, body: bytes = BODY, ts: float | None = None, delivery: str = "d-1") -> dict[str, str]:
    stamp = str(int(time.time() if ts is None else ts))
    return {"x-mlflow-delivery-id": delivery, "x-mlflow-timestamp": stamp,
            "x-mlflow-signature": sign(secret, delivery, stamp, body)}


def test_our_signature_is_mlflows() -> None:
    assert sign("s3cret", "d", "123", BODY) == _generate_hmac_signature("s3cret", "d", "123", BODY.decode())


def test_a_fresh_authentic_delivery_passes() -> None:
    assert check_signature("s3cret", _headers("s3cret"), BODY) is None


@pytest.mark.parametrize("case", ["wrong secret", "edited body", "missing", "stale", "future", "other delivery id"])
def test_bad_deliveries_are_refused(case: str) -> None:
    headers = _headers("s3cret")
    body = BODY
    if case == "wrong secret":
        headers = _headers("other")
    elif case == "edited body":
        body = BODY.replace(b"production", b"staging")
    elif case == "missing":
        headers.pop("x-mlflow-signature")
    elif case == "stale":
        headers = _headers("s3cret", ts=time.time() - MAX_AGE_S - 5)
    elif case == "future":
        headers = _headers("s3cret", ts=time.time() + MAX_AGE_S + 5)
    else:
        headers["x-mlflow-delivery-id"] = "d-2"
    assert check_signature("s3cret", headers, body) is not None
