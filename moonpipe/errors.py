"""Typed errors raised at the engine's edges.

Every message is meant for a user: it says what was wrong and, where it can, what to do.
``code`` is a stable machine-readable prefix; the Triton adapter puts it at the start of
error messages because gRPC streaming drops Triton's error codes (see README).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DeviceLost",
    "EngineError",
    "EngineStopped",
    "InvalidRequest",
    "QueueFull",
    "RequestFailed",
    "RequestTooLarge",
    "raise_limit_hint",
]


def raise_limit_hint(parameter: str) -> str:
    """How a user raises the server limit ``parameter`` (a ``config.pbtxt`` parameter)."""
    return (f"or raise the server's {parameter} (moonpipe serve --param {parameter}=N; "
            f"MOONPIPE_PARAM_{parameter}=N for the container)")


class EngineError(Exception):
    """Base class of every error the engine reports for a request or at start-up."""

    code = "INTERNAL"


class InvalidRequest(EngineError, ValueError):
    """The request itself is wrong (bad image, unknown skill, out-of-range setting)."""

    code = "INVALID_ARG"


class RequestTooLarge(InvalidRequest):
    """The request can never fit (prompt + max_tokens beyond the context or the KV pool)."""


class QueueFull(EngineError):
    """Too many requests are waiting; retry later."""

    code = "UNAVAILABLE"


class EngineStopped(EngineError):
    """The engine is shutting down or its scheduler thread died."""

    code = "UNAVAILABLE"


class RequestFailed(EngineError):
    """The engine failed while running this request (e.g. an exception in a forward)."""

    code = "INTERNAL"


class CheckpointError(EngineError, ValueError):
    """A checkpoint directory is missing files or holds missing/unexpected/mis-shaped tensors."""

    code = "CHECKPOINT"


class DeviceLost(RuntimeError):
    """Internal, never sent to a client as is: a compute stream's worker is gone (a CPU
    worker process crashed or was killed), so no later step can run. The scheduler treats
    it as fatal (every request gets ``EngineStopped``) rather than failing one step."""
