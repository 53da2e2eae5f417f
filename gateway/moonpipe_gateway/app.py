"""The gateway's ASGI app: :func:`create_app` wires routes, errors and the edge middleware.

Routes: Moondream's five skills (:mod:`moonpipe_gateway.moondream_api`), OpenAI chat
completions (:mod:`moonpipe_gateway.openai_api`), ``GET /v1/models`` (both APIs list
models the same way), ``GET /health`` (200 only while Triton says the model is ready),
``GET /metrics`` (Prometheus). Every error is JSON with a real status
(:mod:`moonpipe_gateway.errors`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from moonpipe_client import AsyncClient
from starlette.exceptions import HTTPException

from moonpipe_gateway.config import GatewayConfig
from moonpipe_gateway.errors import CLIENT_CLOSED, ApiError
from moonpipe_gateway.forward import ClientDisconnected, Forwarder
from moonpipe_gateway.metrics import GatewayMetrics
from moonpipe_gateway.middleware import Edge
from moonpipe_gateway.moondream_api import moondream_router
from moonpipe_gateway.openai_api import openai_router
from moonpipe_gateway.services import Services

__all__ = ["create_app", "validation_message"]

log = logging.getLogger("moonpipe_gateway")
_SKILL_ROUTES = ("/v1/caption", "/v1/query", "/v1/point", "/v1/detect", "/v1/segment")
ROUTES = (*_SKILL_ROUTES, "/v1/chat/completions", "/v1/models", "/health", "/metrics")


def validation_message(error: dict[str, Any]) -> tuple[str, str]:
    """``(field, message)`` for one pydantic error of the request body."""
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    field = ".".join(f"[{p}]" if p.isdigit() else p for p in loc).replace(".[", "[") or "body"
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "body", "body: not valid JSON (send Content-Type: application/json with a JSON object)"
    if kind == "missing":
        return field, f"{field}: required, but missing from the request"
    if kind == "extra_forbidden":
        return field, f"{field}: unknown field (the gateway refuses fields it would otherwise ignore)"
    if kind == "model_attributes_type" or (kind.endswith("_type") and not loc):
        return "body", "body: must be a JSON object"
    return field, f"{field}: {error.get('msg', 'invalid value')}"


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(exc)

    async def invalid_body(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        field, message = validation_message(errors[0]) if errors else ("body", "invalid request body")
        return _error_response(ApiError(400, message, param=field, code="invalid_value"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models and docs/rest.md"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _error_response(ApiError(exc.status_code, message, headers=exc.headers))

    async def client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the metrics count it

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected gateway failure on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(ApiError(500, f"internal gateway error ({type(exc).__name__}); see the gateway log"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnected, client_gone)
    app.add_exception_handler(Exception, unexpected)


def _service_routes(app: FastAPI, services: Services) -> None:
    config = services.config

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "moonpipe"}
                                           for name in config.served_models]}

    @app.get("/health")
    async def health() -> Response:
        if await services.forwarder.is_ready(config.ready_timeout_s):
            return JSONResponse({"status": "ready", "model": config.model_name})
        return _error_response(ApiError(503, f"Triton at {config.triton_url} is not serving model "
                                        f"{config.model_name!r} (starting, stopped or unreachable)",
                                        code="not_ready", headers={"Retry-After": "5"}))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(config: GatewayConfig, *, client: AsyncClient | None = None) -> Edge:
    """The gateway as an ASGI app (FastAPI inside :class:`~moonpipe_gateway.middleware.Edge`).

    ``client`` defaults to an :class:`~moonpipe_client.AsyncClient` on ``config.triton_url``
    (one gRPC channel for every request), closed when the app shuts down.
    """
    triton = client or AsyncClient(config.triton_url, timeout=config.request_timeout_s,
                                   model_name=config.model_name)
    services = Services(config, Forwarder(triton), GatewayMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await triton.close()

    app = FastAPI(title="moonpipe gateway", version="0.1.0", lifespan=lifespan,
                  description="Moondream's REST API and OpenAI chat completions over moonpipe on Triton")
    _install_error_handlers(app)
    app.include_router(moondream_router(services))
    app.include_router(openai_router(services))
    _service_routes(app, services)
    return Edge(app, config, services.metrics, ROUTES)
