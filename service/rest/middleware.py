"""The REST edge, as pure ASGI: request id, Server-Timing, body-size limit, request metrics, one log line."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from service.engine import Engine
from service.errors import ShuttingDownError
from service.logs import request_id_var
from service.rest.errors import error_response, error_status

log = logging.getLogger("halo.rest")

ROUTE_NAMES = {"/mesh": "mesh", "/occupancy": "occupancy", "/grasps": "grasps", "/object": "object", "/models": "models"}
UPLOAD_PATHS = ("/grasps", "/object")
MODEL_ENDPOINTS = ("mesh", "occupancy", "grasps")


class EdgeMiddleware:
    """Pure ASGI: request id, Server-Timing, body-size limit, request metrics and one log line per request."""

    def __init__(self, app: Any, engine: Engine):
        self.app = app
        self.engine = engine

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        endpoint = ROUTE_NAMES.get(scope["path"])
        metrics = self.engine.metrics
        started = time.perf_counter()
        status = {"code": 0}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                # Server-Timing: the time from request received to response ready (the viewer shows it).
                server_ms = f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()
                extra = [(b"x-request-id", request_id.encode()), (b"server-timing", server_ms)]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if endpoint is not None:
            metrics.inflight.inc()
        try:
            await self._admit_and_run(scope, receive, send_with_id, endpoint, headers)
        except asyncio.CancelledError:
            status["code"] = status["code"] or 499
            raise
        finally:
            if endpoint is not None:
                self._record(endpoint, status["code"] or 499, time.perf_counter() - started)
            request_id_var.reset(token)

    async def _admit_and_run(self, scope: dict, receive: Any, send: Any, endpoint: str | None, headers: dict) -> None:
        """Refuse the request while stopping or if its body is too long; else run the app on the buffered body."""
        if endpoint in MODEL_ENDPOINTS:
            try:
                self.engine.check_accepting(endpoint)
            except ShuttingDownError as error:
                await error_response(*error_status(error))(scope, receive, send)
                return
        limit = self._body_limit(scope["path"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, f"body: larger than {limit} bytes")(scope, receive, send)
            return
        body, complete = await _read_body(receive, limit)
        if not complete:
            await error_response(413, f"body: larger than {limit} bytes")(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _record(self, endpoint: str, status: int, elapsed: float) -> None:
        """Request metrics and the request's log line."""
        metrics = self.engine.metrics
        metrics.inflight.dec()
        metrics.requests.labels(endpoint, "rest", str(status)).inc()
        metrics.request_duration.labels(endpoint, "rest").observe(elapsed)
        log.info(
            "request", extra={"protocol": "rest", "endpoint": endpoint, "status": status, "seconds": round(elapsed, 4)}
        )

    def _body_limit(self, path: str) -> int:
        settings = self.engine.settings
        if path in UPLOAD_PATHS:
            return max(settings.max_body_bytes, settings.max_upload_bytes + 65536)
        return settings.max_body_bytes


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """Read the request body up to ``limit`` bytes; (body, False) if it is longer."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI receive that yields the buffered body once, then passes through (disconnects)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
