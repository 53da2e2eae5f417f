"""HTTP errors of the gateway: one exception type, one JSON body, real status codes.

Every error answers with ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's
shape, which the ``openai`` package parses; Moondream's client only reads the status).
``param`` names the request field at fault. :func:`from_moonpipe` maps the typed errors
of ``moonpipe_client`` (the server's stable prefixes) to statuses: bad input 400 (413
when the image is too large), queue full / stopping 503, Triton unreachable 502,
deadline 504, an engine failure 500.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from moonpipe_client import (
    Cancelled,
    ConnectionFailed,
    InvalidRequest,
    MoonpipeError,
    RequestTimeout,
    ServerUnavailable,
)

__all__ = ["CLIENT_CLOSED", "ApiError", "from_moonpipe"]

CLIENT_CLOSED = 499  # nginx's "client closed request": recorded in metrics, never sent

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    500: "server_error",
    502: "upstream_unreachable",
    503: "service_unavailable",
    504: "timeout",
    CLIENT_CLOSED: "client_closed_request",
}
# "IMAGE: 5000x5000 = ... pixels exceeds the limit", "IMAGE: 123 bytes is over the limit",
# "IMAGE: image too large to decode safely": the engine's image-size refusals.
_TOO_LARGE = re.compile(r"exceeds the limit|over the limit|too large", re.IGNORECASE)
_INPUT = re.compile(r"^([A-Z_]+): ")


class ApiError(Exception):
    """An HTTP error response: ``status``, a message a user can act on, the field at fault."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, object]]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}


def from_moonpipe(exc: MoonpipeError, fields: Mapping[str, str], triton_url: str) -> ApiError:
    """The HTTP error for a failed Triton call; ``fields`` maps Triton input names
    (``IMAGE``, ``PROMPT``, ``MAX_TOKENS``...) to the request's own field names."""
    message = str(exc)
    if isinstance(exc, InvalidRequest):
        match = _INPUT.match(message)
        name = match.group(1) if match else ""
        param = fields.get(name)
        text = f"{param}: {message[match.end():]}" if match and param else message
        status = 413 if name == "IMAGE" and _TOO_LARGE.search(message) else 400
        return ApiError(status, text, param=param, code="invalid_value")
    if isinstance(exc, ConnectionFailed):
        return ApiError(502, f"the gateway cannot reach Triton at {triton_url}: {message}", code="upstream_unreachable",
                        headers={"Retry-After": "5"})
    if isinstance(exc, ServerUnavailable):
        return ApiError(503, f"the model cannot take the request now ({message}); retry later",
                        code="overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, RequestTimeout):
        return ApiError(504, f"no complete answer within the gateway's request timeout: {message}",
                        code="timeout")
    if isinstance(exc, Cancelled):
        return ApiError(503, f"the server cancelled the request ({message}); retry later", code="cancelled",
                        headers={"Retry-After": "1"})
    return ApiError(500, f"the model failed while running the request: {message}", code="engine_error")
