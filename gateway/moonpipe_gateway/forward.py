"""Forwarding one HTTP request to Triton: start the gRPC stream, read its first response
before any HTTP header goes out, then hand out the rest; cancel it if the client leaves.

Why the first response first: the engine refuses bad input (undecodable image, empty
prompt) and a full queue with an error *response*, not a gRPC status, and a Moondream or
OpenAI client only sees a real status code if it comes before the SSE headers. Waiting
for the first response costs nothing a client would notice: the headers go out together
with the first token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from moonpipe_client import AsyncClient, AsyncStream, MoonpipeError
from moonpipe_client.protocol import Settings
from moonpipe_client.results import Chunk, Result
from starlette.requests import Request

from moonpipe_gateway.errors import ApiError, from_moonpipe

__all__ = ["Call", "ClientDisconnected", "Forwarder", "Opened", "check_finish", "guard"]

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The HTTP client went away before the answer was ready (its Triton call is cancelled)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One skill call as the engine sees it; ``fields`` maps Triton input names to the
    request's own field names so that engine errors name the field the user sent."""

    skill: str
    image: bytes
    prompt: str = ""
    stream: bool = False
    settings: Settings = field(default_factory=Settings)
    fields: Mapping[str, str] = field(default_factory=dict)


def check_finish(finish_reason: str | None) -> None:
    """Raise the :class:`ApiError` for a request the engine ended without a usable answer
    (``error``: e.g. a malformed segment path, details in the server log; ``cancelled``:
    the server stopped it)."""
    if finish_reason == "error":
        raise ApiError(500, "the model ended the request with an error (details in the tritonserver log)",
                       code="engine_error")
    if finish_reason == "cancelled":
        raise ApiError(503, "the server cancelled the request (it may be shutting down); retry later",
                       code="cancelled", headers={"Retry-After": "1"})


class Opened:
    """A started call whose first response has arrived: iterate :meth:`chunks` or await
    :meth:`result`; :meth:`cancel` aborts it on the server (a no-op once it ended)."""

    def __init__(self, handle: AsyncStream[Chunk, Result], first: Chunk, call: Call, triton_url: str) -> None:
        self._handle = handle
        self._first = first
        self._call = call
        self._triton_url = triton_url

    @property
    def first(self) -> Chunk:
        return self._first

    @property
    def final_result(self) -> Result | None:
        """The typed result once the final chunk was handed out; None before."""
        return self._handle.result

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Every chunk, the first included; raises :class:`ApiError` for a failure mid-way."""
        try:
            check_finish(self._first.finish_reason)
            yield self._first
            async for chunk in self._handle:
                check_finish(chunk.finish_reason)
                yield chunk
        except MoonpipeError as exc:
            raise from_moonpipe(exc, self._call.fields, self._triton_url) from None
        finally:
            self._handle.cancel()

    async def result(self) -> Result:
        """The complete typed result (waits for the final response)."""
        try:
            result = await self._handle.wait()
            check_finish(result.finish_reason)
            return result
        except MoonpipeError as exc:
            raise from_moonpipe(exc, self._call.fields, self._triton_url) from None
        finally:
            self._handle.cancel()

    def cancel(self) -> None:
        self._handle.cancel()


class Forwarder:
    """Opens calls on one :class:`~moonpipe_client.AsyncClient` (one channel, many streams)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @property
    def triton_url(self) -> str:
        return self._client.url

    async def open(self, call: Call) -> Opened:
        """Send ``call`` and wait for its first response; engine refusals raise :class:`ApiError`."""
        handle = self._client.chunks(call.skill, call.image, call.prompt, stream=call.stream,
                                     settings=call.settings)
        try:
            first = await handle.__anext__()
        except MoonpipeError as exc:
            raise from_moonpipe(exc, call.fields, self.triton_url) from None
        except StopAsyncIteration:
            raise ApiError(502, "Triton ended the call without a response", code="upstream_error") from None
        except BaseException:
            handle.cancel()  # cancelled (client gone) or anything unexpected: free the engine's slot
            raise
        return Opened(handle, first, call, self.triton_url)

    async def is_ready(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self._client.is_ready(), timeout)
        except asyncio.TimeoutError:
            return False


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body was already read)."""
    while True:
        message: Any = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def guard(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first: then cancel it (which cancels
    its gRPC call) and raise :class:`ClientDisconnected`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ApiError):
        await task  # it ends because we cancelled it; nobody is left to tell
    raise ClientDisconnected
