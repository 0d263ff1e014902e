"""The webhook receiver (Starlette + uvicorn, both MLflow dependencies): verify, record, enqueue, answer.

MLflow signs each delivery: ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
"<delivery id>.<timestamp>.<body>")>`` with ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp`` (unix
seconds). A wrong, missing or stale signature gets 401 and changes nothing; the work itself is done
by the controller's worker, so MLflow's request returns at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from edgeqat.deploy.controller import Controller

log = logging.getLogger(__name__)
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "x-mlflow-signature", "x-mlflow-timestamp", "x-mlflow-delivery-id"
MAX_AGE_S = 300  # a delivery older (or newer) than this is a replay, not a retry


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature MLflow sends (``mlflow.webhooks.delivery._generate_hmac_signature``)."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret.encode(), content, hashlib.sha256).digest()).decode()


def check_signature(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> str | None:
    """None when the delivery is authentic and fresh; otherwise why not (for the log, never the client)."""
    delivery, timestamp, signature = (headers.get(h) for h in (DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not (delivery and timestamp and signature):
        return "missing signature headers"
    try:
        age = abs((now or time.time()) - int(timestamp))
    except ValueError:
        return "bad timestamp"
    if age > MAX_AGE_S:
        return f"stale delivery ({age:.0f} s old)"
    if not hmac.compare_digest(sign(secret, delivery, timestamp, body), signature):
        return "signature does not match"
    return None


def create_app(controller: Controller, secret: str) -> Starlette:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from edgeqat.deploy.controller import WebhookEvent

    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        problem = check_signature(secret, headers, body)
        if problem is not None:
            log.warning("webhook refused: %s", problem)
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            event = WebhookEvent.from_payload(headers[DELIVERY_HEADER], json.loads(body))
        except (ValueError, AttributeError):
            return JSONResponse({"error": "body is not an MLflow webhook payload"}, status_code=400)
        return JSONResponse({"result": controller.handle_event(event)})

    async def health(request: Request) -> JSONResponse:
        current = {name: controller.state.current(name) for name in controller.targets}
        return JSONResponse({"status": "ok", "targets": {
            name: (None if c is None else {"model": c.model, "version": c.version}) for name, c in current.items()}})

    return Starlette(routes=[Route("/webhook", webhook, methods=["POST"]), Route("/health", health)])
