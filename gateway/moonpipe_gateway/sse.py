"""Server-sent events as a raw ASGI response that owns its request's lifetime.

Starlette's ``StreamingResponse`` would do for the happy path; this one also (1) cancels
the Triton call the moment the client disconnects, even while no token is flowing (a
request still queued in the engine), and (2) on a failure after the headers went out,
sends an ``error`` event and then, for Moondream's routes, drops the connection without
the end of the chunked body: Moondream's client ignores unknown events, so only a
truncated body (``http.client.IncompleteRead`` in the caller) tells it the answer is
incomplete. OpenAI's client raises on the ``error`` event itself, so that stream ends
normally.

Every token costs one event, so the per-token work is kept small: :class:`TextEvent`
encodes the JSON around the text once per stream, and what goes out at the same moment
goes out in one ASGI message (one socket write): events made from one engine response,
and the closing events together with the end of the body (:class:`Last`).
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

__all__ = ["DONE", "OUTCOME_KEY", "SLOT", "EventStream", "Last", "TextEvent", "sse"]

DONE = b"data: [DONE]\n\n"
OUTCOME_KEY = "moonpipe_outcome"  # scope["state"][...]: how a stream really ended, for metrics
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx and friends: do not buffer the stream
]
log = logging.getLogger("moonpipe_gateway")


SLOT = "\x00moonpipe-slot\x00"  # where :class:`TextEvent` puts its text


def sse(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event (JSON on one line, as both clients parse it)."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class TextEvent:
    """An event sent once per token whose JSON differs only in one string: the bytes
    around that string are encoded once, so ``event(text)`` costs one string escape.
    ``event(text) == sse(payload with SLOT replaced by text)``, byte for byte."""

    __slots__ = ("_head", "_tail")

    def __init__(self, payload: dict[str, Any]) -> None:
        slot = json.dumps(SLOT).encode()
        head, found, tail = sse(payload).partition(slot)
        if not found or slot in tail:
            raise ValueError("TextEvent: the payload must hold SLOT exactly once")
        self._head = head
        self._tail = tail

    def __call__(self, text: str) -> bytes:
        return self._head + json.dumps(text).encode() + self._tail


class Last(bytes):
    """The stream's closing events: :class:`EventStream` sends them together with the end
    of the body (one write instead of two) and reads nothing after them."""


async def _close(events: AsyncIterator[bytes]) -> None:
    """Run the cleanup of an event generator left before its end (or after it: a no-op)."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


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
        """Send every event; True if the body still has to be finished normally."""
        try:
            async for event in self._events:
                if isinstance(event, Last):
                    await send({"type": "http.response.body", "body": bytes(event), "more_body": False})
                    return False
                await send({"type": "http.response.body", "body": event, "more_body": True})
        except ApiError as exc:
            self.outcome = exc.status
            log.warning("stream failed after its headers were sent (%s): %s", exc.status, exc.message)
            await send({"type": "http.response.body", "body": sse(exc.body()), "more_body": True})
            return not self._abort_on_error
        finally:
            await _close(self._events)
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
