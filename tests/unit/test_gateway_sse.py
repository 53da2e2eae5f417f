"""The gateway's SSE framing: per-token events encoded from a template, and the ASGI
messages :class:`~moonpipe_gateway.sse.EventStream` sends (raw ASGI, no server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from moonpipe_gateway.errors import ApiError
from moonpipe_gateway.sse import SLOT, EventStream, Last, TextEvent, sse


@given(st.text())
def test_text_events_are_the_bytes_of_the_whole_payload(text: str) -> None:
    chunk = TextEvent({"chunk": SLOT, "completed": False})
    assert chunk(text) == sse({"chunk": text, "completed": False})
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": None}
    content = TextEvent({**head, "choices": [{"index": 0, "delta": {"content": SLOT}, "finish_reason": None}]})
    assert content(text) == sse({**head, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
    assert json.loads(chunk(text).removeprefix(b"data: "))["chunk"] == text


def test_a_template_needs_its_slot_once() -> None:
    with pytest.raises(ValueError, match="SLOT"):
        TextEvent({"chunk": "no slot"})
    with pytest.raises(ValueError, match="SLOT"):
        TextEvent({"a": SLOT, "b": SLOT})


class _Client:
    """The ASGI side of one connection: what the app sent, and a client that never leaves
    (or leaves once ``leave`` is set)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.leave = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def bodies(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.messages if m["type"] == "http.response.body"]


def _stream(events: list[bytes], *, fail: ApiError | None = None,
            abort_on_error: bool = True) -> tuple[EventStream, list[str]]:
    log: list[str] = []

    async def produce() -> AsyncIterator[bytes]:
        try:
            for event in events:
                yield event
            if fail is not None:
                raise fail
            yield b"never sent\n\n"  # a stream stops at its Last events
        finally:
            log.append("generator closed")

    return EventStream(produce(), lambda: log.append("on_close"), abort_on_error=abort_on_error), log


def _run(stream: EventStream, client: _Client) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http"}
    asyncio.run(stream(scope, client.receive, client.send))  # type: ignore[arg-type]
    return scope


def test_the_last_events_end_the_body_in_the_same_message() -> None:
    stream, log = _stream([b"data: 1\n\n", b"data: 2\n\n", Last(b"data: 3\n\ndata: end\n\n")])
    client = _Client()
    scope = _run(stream, client)
    assert client.messages[0]["type"] == "http.response.start" and client.messages[0]["status"] == 200
    assert client.bodies == [(b"data: 1\n\n", True), (b"data: 2\n\n", True), (b"data: 3\n\ndata: end\n\n", False)]
    assert b"".join(body for body, _ in client.bodies).count(b"\n\n") == 4  # every event kept
    assert log == ["generator closed", "on_close"] and stream.outcome == 200
    assert scope["state"]["moonpipe_outcome"] == 200


def test_a_failure_mid_stream_sends_an_error_event() -> None:
    error = ApiError(503, "the server cancelled the request", code="cancelled")
    for abort, ends_body in ((True, False), (False, True)):
        stream, log = _stream([b"data: 1\n\n"], fail=error, abort_on_error=abort)
        client = _Client()
        _run(stream, client)
        assert client.bodies[0] == (b"data: 1\n\n", True)
        assert json.loads(client.bodies[1][0].removeprefix(b"data: "))["error"]["code"] == "cancelled"
        assert (client.bodies[-1] == (b"", False)) is ends_body  # Moondream's routes: a truncated body
        assert stream.outcome == 503 and log == ["generator closed", "on_close"]


def test_a_client_that_leaves_stops_the_stream() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"data: x\n\n"
            await asyncio.sleep(0.001)

    closed: list[bool] = []
    stream = EventStream(endless(), lambda: closed.append(True), abort_on_error=True)
    client = _Client()

    async def main() -> None:
        task = asyncio.ensure_future(stream({"type": "http"}, client.receive, client.send))  # type: ignore[arg-type]
        while len(client.bodies) < 3:
            await asyncio.sleep(0.001)
        client.leave.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert closed == [True] and stream.outcome == 499
    assert all(more for _, more in client.bodies)  # nobody to finish the body for
