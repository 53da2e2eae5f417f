"""Typed errors of the moonpipe client.

The server reports a failed request with a message that starts with a stable prefix
(``INVALID_ARG: ...``, ``UNAVAILABLE: ...``, ``CANCELLED: ...``, ``INTERNAL: ...``)
because Triton's gRPC *streaming* API drops error codes. :func:`error_from_message` turns
such a message into the matching exception; :func:`error_from_grpc` does the same for
transport failures, which do carry a gRPC status code.
"""

from __future__ import annotations

import re

__all__ = [
    "Cancelled",
    "ConnectionFailed",
    "InvalidRequest",
    "MoonpipeError",
    "RequestTimeout",
    "ServerError",
    "ServerUnavailable",
    "connection_hint",
    "error_from_grpc",
    "error_from_message",
]


class MoonpipeError(Exception):
    """Base class of every error the client raises for a request.

    ``code`` is the server's stable prefix (``INVALID_ARG``, ``UNAVAILABLE``,
    ``CANCELLED``, ``INTERNAL``) or a client-side code (``CONNECTION``, ``TIMEOUT``);
    ``str(error)`` is the message without the prefix.
    """

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(MoonpipeError, ValueError):
    """The request is wrong (bad image, empty prompt, out-of-range setting); do not retry."""

    code = "INVALID_ARG"


class ServerUnavailable(MoonpipeError):
    """The server cannot take the request now (queue full, shutting down); retry later."""

    code = "UNAVAILABLE"


class ConnectionFailed(ServerUnavailable, ConnectionError):
    """The server could not be reached (wrong URL, server down, network problem)."""

    code = "CONNECTION"


class RequestTimeout(MoonpipeError, TimeoutError):
    """The request did not finish within the client's ``timeout``."""

    code = "TIMEOUT"


class Cancelled(MoonpipeError):
    """The request was cancelled (by this client or by the server)."""

    code = "CANCELLED"


class ServerError(MoonpipeError):
    """The server failed while running the request, or answered in an unexpected way."""

    code = "INTERNAL"


_BY_PREFIX: dict[str, type[MoonpipeError]] = {
    "INVALID_ARG": InvalidRequest,
    "UNAVAILABLE": ServerUnavailable,
    "CANCELLED": Cancelled,
    "INTERNAL": ServerError,
}
# The prefix may follow text Triton adds in front ("... message: INVALID_ARG: ...").
_PREFIX_RE = re.compile(r"(?:^|[\s:'\"(\[])(INVALID_ARG|UNAVAILABLE|CANCELLED|INTERNAL): ?")

# gRPC status names (``grpc.StatusCode.X.name``) -> error type, for transport failures.
_BY_GRPC_STATUS: dict[str, type[MoonpipeError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "UNAVAILABLE": ConnectionFailed,
    "DEADLINE_EXCEEDED": RequestTimeout,
    "CANCELLED": Cancelled,
    "RESOURCE_EXHAUSTED": ServerUnavailable,
}


def error_from_message(message: str) -> MoonpipeError:
    """The typed error for a server error message (``ServerError`` when it has no prefix)."""
    match = _PREFIX_RE.search(message)
    if match is None:
        return ServerError(message.strip() or "the server reported an error without a message")
    return _BY_PREFIX[match.group(1)](message[match.end():].strip())


# Triton's other default ports, and what gRPC reports when the peer is no gRPC server
# (an HTTP/1 server, or a TLS-only one spoken to in plain text) or the TLS handshake fails.
_TRITON_PORTS = {"8000": "HTTP", "8002": "metrics"}
_NOT_GRPC = ("socket closed", "failed parsing http/2", "http1.x", "connection reset")
_TLS_FAILED = ("handshake", "ssl", "certificate")


def connection_hint(url: str, details: str) -> str:
    """What to check when ``url`` cannot be reached (``details``: gRPC's reason)."""
    port = url.rstrip("/").rsplit(":", 1)[-1]
    reason = details.lower()
    if port in _TRITON_PORTS:
        return (f"{port} is Triton's {_TRITON_PORTS[port]} port; moonpipe-client speaks gRPC, "
                "Triton's gRPC port is 8001 by default (`moonpipe serve` prints it)")
    if "restricted" in reason and "header" in reason:
        return ("the server admits only calls that carry the header it names: give it with "
                "--header 'NAME: VALUE' (headers= in Python)")
    if any(s in reason for s in _TLS_FAILED):
        return ("the TLS handshake failed: check https:// / --tls against the server's setting, "
                "and --ca-cert for a private certificate authority")
    if any(s in reason for s in _NOT_GRPC):
        return ("what answered there does not speak plain gRPC: Triton's HTTP port (8000 by "
                "default) or metrics port (8002)? Use its gRPC port (8001 by default; `moonpipe "
                "serve` prints it); a server that wants TLS needs https:// or --tls")
    return "is tritonserver running, and is this its gRPC port (8001 by default)?"


def error_from_grpc(status: str | None, details: str, url: str, *, deadline_passed: bool = False) -> MoonpipeError:
    """The typed error for a failed gRPC call; ``status`` is a ``StatusCode`` name or None.

    Messages of the server's own errors keep their prefix even when a status is present,
    so the prefix wins; otherwise the status decides. Transport failures (UNAVAILABLE,
    DEADLINE_EXCEEDED) always follow the status: gRPC's own reason may contain
    ``last error: UNAVAILABLE: ...``, which is not the server speaking. gRPC reports an
    expired deadline as INTERNAL now and then ("Internal error from Core", grpc/grpc#2685):
    with ``deadline_passed`` such an error is the timeout it is.
    """
    name = None if status is None else status.rsplit(".", 1)[-1]  # "StatusCode.X" -> "X"
    if name == "INTERNAL" and deadline_passed and not _PREFIX_RE.search(details):
        name = "DEADLINE_EXCEEDED"
    if name is None or (name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and _PREFIX_RE.search(details)):
        return error_from_message(details)
    kind = _BY_GRPC_STATUS.get(name, ServerError)
    if kind is ConnectionFailed:
        return ConnectionFailed(
            f"cannot reach the moonpipe server at {url}: {details.strip()} ({connection_hint(url, details)})"
        )
    if kind is RequestTimeout:
        return RequestTimeout(f"no complete answer from {url} within the timeout ({details.strip()})")
    return kind(f"{name}: {details.strip()}")
