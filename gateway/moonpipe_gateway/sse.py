"""Server-sent events as a raw ASGI response that owns its request's lifetime.

Starlette's ``StreamingResponse`` would do for the happy path; this one also (1) cancels
the Triton call the moment the client disconnects, even while no token is flowing (a
request still queued in the engine), and (2) on a failure after the headers went out,
sends an ``error`` event and then, for Moondream's routes, drops the connection without
the end of the chunked body: Moondream's client ignores unknown events, so only a
truncated body (``http.client.IncompleteRead`` in the caller) tells it the answer is
incomplete. OpenAI's client raises on the ``error`` event itself, so that stream ends
normally.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from moonpipe_gateway.errors import ApiError

__all__ = ["DONE", "OUTCOME_KEY", "EventStream", "sse"]

DONE = b"data: [DONE]\n\n"
OUTCOME_KEY = "moonpipe_outcome"  # scope["state"][...]: how a stream really ended, for metrics
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx and friends: do not buffer the stream
]
log = logging.getLogger("moonpipe_gateway")


def sse(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event (JSON on one line, as both clients parse it)."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        continue


class EventStream(Response):
    """An ASGI response streaming ``events``; ``on_close`` runs however it ends.

    ``abort_on_error``: after an :class:`ApiError` mid-stream, close the connection
    without finishing the body (Moondream's routes) instead of ending it normally.
    ``outcome`` is the status for metrics: 200, the error's status, or 499 (client gone);
    it is also left in ``scope["state"]`` for the metrics middleware.
    """

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None], *,
                 abort_on_error: bool) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")  # headers: _HEADERS
        self._events = events
        self._on_close = on_close
        self._abort_on_error = abort_on_error
        self.outcome = 200

    async def _pump(self, send: Send) -> bool:
        """Send every event; True if the body should be finished normally."""
        try:
            async for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        except ApiError as exc:
            self.outcome = exc.status
            log.warning("stream failed after its headers were sent (%s): %s", exc.status, exc.message)
            await send({"type": "http.response.body", "body": sse(exc.body()), "more_body": True})
            return not self._abort_on_error
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pump.done():
                pump.cancel()
            self._on_close()
        finish = False
        if pump not in done or isinstance(pump.exception(), OSError):  # OSError: gone while we wrote
            self.outcome = 499
        else:
            finish = pump.result()  # re-raises a failure of our own
        scope.setdefault("state", {})[OUTCOME_KEY] = self.outcome
        if finish:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
