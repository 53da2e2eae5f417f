"""The gateway's edge, as one raw ASGI middleware (it must see streamed responses end):

1. paths are normalised: ``//`` collapses and a trailing ``/`` goes, because Moondream's
   client builds ``f"{endpoint}/caption"`` and an endpoint given with a trailing slash
   asks for ``/v1//caption``;
2. API keys (when configured) are checked for ``/v1/*``: ``X-Moondream-Auth: KEY`` (what
   Moondream's client sends) or ``Authorization: Bearer KEY`` (OpenAI's); ``/health`` and
   ``/metrics`` stay open for probes and scrapers;
3. the body size is capped (413), by ``Content-Length`` up front and by counting as it
   is read;
4. every request is counted and timed (:class:`~moonpipe_gateway.metrics.GatewayMetrics`).
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Collection

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moonpipe_gateway.config import GatewayConfig
from moonpipe_gateway.errors import ApiError
from moonpipe_gateway.metrics import GatewayMetrics
from moonpipe_gateway.sse import OUTCOME_KEY

__all__ = ["BodyTooLarge", "Edge", "normalise_path"]

_SLASHES = re.compile(r"/{2,}")
_OPEN_PATHS = ("/health", "/metrics")


class BodyTooLarge(HTTPException):
    """The body grew past the limit while it was read (FastAPI re-raises HTTPExceptions)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes; send a smaller image "
                              "(the limit is the gateway's --max-body-mb)")


def normalise_path(path: str) -> str:
    """``/v1//caption/`` -> ``/v1/caption``."""
    path = _SLASHES.sub("/", path)
    return path.rstrip("/") or "/"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class Edge:
    """Path normalisation, API keys, body limit and metrics around the FastAPI app."""

    def __init__(self, app: ASGIApp, config: GatewayConfig, metrics: GatewayMetrics, routes: Collection[str]) -> None:
        self._app = app
        self._config = config
        self._metrics = metrics
        self._routes = frozenset(routes)

    def _key_ok(self, scope: Scope) -> bool:
        given = _header(scope, b"x-moondream-auth")
        if given is None:
            auth = _header(scope, b"authorization") or ""
            scheme, _, token = auth.partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if not given:
            return False
        return any(hmac.compare_digest(given.encode(), key.encode()) for key in self._config.api_keys)

    def _refusal(self, scope: Scope) -> ApiError | None:
        path = scope["path"]
        if self._config.auth_required and path.startswith("/v1/") and path not in _OPEN_PATHS \
                and not self._key_ok(scope):
            return ApiError(401, "missing or wrong API key: send it as X-Moondream-Auth: <key> "
                            "(md.vl(api_key=...)) or Authorization: Bearer <key> (OpenAI clients)",
                            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self._config.max_body_bytes:
            return ApiError(413, f"the request body is {length} bytes, over the limit of "
                            f"{self._config.max_body_bytes} bytes; send a smaller image", code="body_too_large")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = normalise_path(scope["path"])
        if path != scope["path"]:
            scope = {**scope, "path": path, "raw_path": path.encode()}
        route = path if path in self._routes else "other"
        start = time.perf_counter()
        status = 500
        first_byte: float | None = None

        async def send_timed(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = int(message["status"])
                first_byte = time.perf_counter() - start
            await send(message)

        self._metrics.in_flight.inc()
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _send_error(refusal, send_timed)
                return
            await self._app(scope, self._limited(receive), send_timed)
        finally:
            self._metrics.in_flight.dec()
            outcome = (scope.get("state") or {}).get(OUTCOME_KEY, status)
            self._metrics.observe(route, int(outcome), time.perf_counter() - start, first_byte)

    def _limited(self, receive: Receive) -> Receive:
        limit = self._config.max_body_bytes
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return counted


async def _send_error(error: ApiError, send: Send) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
