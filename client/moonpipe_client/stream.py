"""Iterators over one request's streamed output, sync (:class:`Stream`) and asyncio
(:class:`AsyncStream`).

Both yield *items* (text deltas for caption/query, :class:`Point`/:class:`Box` objects as
they complete for point/detect) and, once exhausted, hold the full typed result in
``result``. Closing one before the end (``close()``/``aclose()``, leaving a ``with``
block, or dropping the last reference) cancels the gRPC call, which makes the server
cancel the request (``response_sender.is_cancelled()`` turns true); ``result`` then holds
what had arrived, with ``finish_reason`` ``cancelled`` (token counts are 0: the server
sends them only with the final response).

After the final response both wait (at most ``END_WAIT_S``) for the server to end the
gRPC call before they hand out the last items. The server ends it right away (the request
stream was half-closed after its one request), so this costs well under a millisecond;
dropping the call earlier cancels it, and a cancel that races the server's end of stream
leaves Triton 2.51 holding the model, which then cannot unload when the server stops (it
exits 1 after ``--exit-timeout-secs``; docs/limits.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import grpc

from moonpipe_client.errors import MoonpipeError, ServerError, error_from_grpc
from moonpipe_client.protocol import parse_stream_response
from moonpipe_client.results import Chunk, Result, ResultBuilder

if TYPE_CHECKING:
    from tritonclient.grpc import service_pb2

__all__ = ["AsyncStream", "Extract", "Stream", "wait_for_end"]

T = TypeVar("T")  # the items yielded
R = TypeVar("R", bound=Result)  # the final result
Extract = Callable[[Chunk], "list[Any]"]

_EARLY_END = "the server closed the stream before the request's final response"
END_WAIT_S = 2.0  # how long a finished request waits for the server to end its call


def wait_for_end(call: Any, timeout: float) -> bool:
    """Wait at most ``timeout`` s until the server ended a (sync) gRPC call; True if it did.
    The done callback fires without reading: the call's status arrives on its own."""
    ended = threading.Event()
    call.add_done_callback(lambda *_: ended.set())  # runs at once if it already ended
    return ended.wait(timeout)


def _rpc_error(exc: grpc.RpcError, url: str, call: Any) -> MoonpipeError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_from_grpc(None if code is None else code.name, details or str(exc), url,
                           deadline_passed=_deadline_passed(call))


def _deadline_passed(call: Any) -> bool:
    try:
        remaining = call.time_remaining()
    except Exception:  # not a call with a deadline (or no call at all): no evidence
        return False
    return remaining is not None and remaining <= 0


class _StreamState(Generic[T, R]):
    """What both iterators share: the result being built and items not yet handed out."""

    def __init__(self, builder: ResultBuilder, extract: Extract, url: str) -> None:
        self._builder = builder
        self._extract = extract
        self._url = url
        self._pending: deque[T] = deque()
        self._result: R | None = None
        self._closed = False

    def _take(self, message: service_pb2.ModelStreamInferResponse) -> None:
        chunk = parse_stream_response(message)  # raises the typed error of an error response
        self._builder.add(chunk)
        self._pending.extend(self._extract(chunk))
        if chunk.final:
            self._result = cast(R, self._builder.build())

    @property
    def done(self) -> bool:
        """True once the final response arrived (or the stream was closed or failed)."""
        return self._result is not None or self._closed

    @property
    def result(self) -> R | None:
        """The complete typed result once the final response arrived, the partial one
        (``finish_reason`` ``cancelled``) once the stream was closed early; None before
        either, and after a failure."""
        return self._result

    def _close_early(self, call: Any) -> None:
        """Cancel ``call`` if the request is still running and keep what arrived so far."""
        if not self.done:
            if call is not None:
                call.cancel()
            self._result = cast(R, self._builder.build(finish_reason="cancelled"))
        self._closed = True


class Stream(_StreamState[T, R], Iterator[T]):
    """A sync iterator over one streamed request; a context manager that cancels on exit."""

    def __init__(self, call: Any, builder: ResultBuilder, extract: Extract, url: str) -> None:
        super().__init__(builder, extract, url)
        self._call = call  # grpc stream-stream call: an iterator of responses with cancel()

    def __iter__(self) -> Stream[T, R]:
        return self

    def __next__(self) -> T:
        while not self._pending:
            if self._result is not None or self._closed:
                raise StopIteration
            try:
                message = next(self._call)
            except StopIteration:
                self._closed = True
                raise ServerError(_EARLY_END) from None
            except grpc.RpcError as exc:
                self._closed = True
                raise _rpc_error(exc, self._url, self._call) from None
            except MoonpipeError:
                self._closed = True
                raise
            try:
                self._take(message)
            except MoonpipeError:
                self._closed = True
                raise
            if self._result is not None:  # let the server end the call (module docstring)
                wait_for_end(self._call, END_WAIT_S)
        return self._pending.popleft()

    def wait(self) -> R:
        """Consume the rest of the stream and return the complete result."""
        for _ in self:
            pass
        if self._result is None:
            raise ServerError(_EARLY_END)
        return self._result

    def close(self) -> None:
        """Stop reading; if the request is still running, cancel it on the server
        (``result`` becomes the partial result)."""
        self._close_early(self._call)

    def __enter__(self) -> Stream[T, R]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_result", None) is None:
            self._call.cancel()


class AsyncStream(_StreamState[T, R], AsyncIterator[T]):
    """An async iterator over one streamed request; ``async with`` cancels on exit.

    The gRPC call starts on the first ``__anext__`` (``start()`` opens it), so a stream that
    is never iterated sends nothing.
    """

    def __init__(self, start: Callable[[], Any], builder: ResultBuilder, extract: Extract,
                 url: str) -> None:
        super().__init__(builder, extract, url)
        self._start = start
        self._call: Any = None

    def __aiter__(self) -> AsyncStream[T, R]:
        return self

    async def __anext__(self) -> T:
        while not self._pending:
            if self._result is not None or self._closed:
                raise StopAsyncIteration
            try:
                if self._call is None:
                    self._call = self._start()
                message = await self._call.read()
            except grpc.RpcError as exc:
                self._closed = True
                raise _rpc_error(exc, self._url, self._call) from None
            if message is grpc.aio.EOF:
                self._closed = True
                raise ServerError(_EARLY_END)
            try:
                self._take(message)
            except MoonpipeError:
                self._closed = True
                raise
            if self._result is not None:
                await self._await_end()
        return self._pending.popleft()

    async def _await_end(self) -> None:
        """Let the server end the call (see module docstring), bounded by ``END_WAIT_S``."""
        try:
            await asyncio.wait_for(asyncio.shield(self._call.code()), END_WAIT_S)
        except (asyncio.TimeoutError, grpc.RpcError):
            pass

    async def wait(self) -> R:
        """Consume the rest of the stream and return the complete result."""
        async for _ in self:
            pass
        if self._result is None:
            raise ServerError(_EARLY_END)
        return self._result

    async def aclose(self) -> None:
        """Stop reading; if the request is still running, cancel it on the server."""
        self.cancel()

    def cancel(self) -> None:
        """Synchronous form of :meth:`aclose` (safe from ``__del__`` and callbacks)."""
        self._close_early(self._call)

    async def __aenter__(self) -> AsyncStream[T, R]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.cancel()

    def __del__(self) -> None:
        call = getattr(self, "_call", None)
        if call is not None and not getattr(self, "_closed", True) and getattr(self, "_result", None) is None:
            call.cancel()
