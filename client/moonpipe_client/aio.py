"""The asyncio client: many concurrent requests from one process over one channel.

``await client.caption(image)`` returns the typed result;
``client.caption(image, stream=True)`` returns an :class:`~moonpipe_client.stream.AsyncStream`
to use with ``async for`` (no ``await``). Each request is its own ``ModelStreamInfer``
call on the shared HTTP/2 channel. The end of a request is the response flagged
``triton_final_response`` (requested with ``triton_enable_empty_final_response``, which
tritonclient's own asyncio ``stream_infer`` cannot set) or an error response.
"""

from __future__ import annotations

from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, overload

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from moonpipe_client.client import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    check_timeout,
    extract_boxes,
    extract_nothing,
    extract_points,
    extract_text,
)
from moonpipe_client.connection import Connection, Headers, PemInput
from moonpipe_client.images import ImageInput, encode_image
from moonpipe_client.protocol import MODEL_NAME, Settings, build_request
from moonpipe_client.results import (
    Answer,
    Box,
    Caption,
    Chunk,
    Detection,
    Point,
    Points,
    Result,
    ResultBuilder,
    Segment,
)
from moonpipe_client.stream import AsyncStream, Extract

__all__ = ["AsyncClient"]


def _each_chunk(chunk: Chunk) -> list[Chunk]:
    return [chunk]


class AsyncClient:
    """A moonpipe server client for asyncio; use one per event loop (``async with``).

    Same methods, connection options (TLS, headers) and errors as
    :class:`~moonpipe_client.Client`. The gRPC channel opens lazily inside the running loop
    and is closed by :meth:`close`.
    """

    def __init__(self, url: str = DEFAULT_URL, timeout: float | None = DEFAULT_TIMEOUT, *,
                 model_name: str = MODEL_NAME, tls: bool | None = None, ca_cert: PemInput | None = None,
                 client_cert: PemInput | None = None, client_key: PemInput | None = None,
                 headers: Headers | None = None) -> None:
        self.url = url
        self.timeout = check_timeout(timeout)
        self.model_name = model_name
        self.connection = Connection.create(url, tls=tls, ca_cert=ca_cert, client_cert=client_cert,
                                            client_key=client_key, headers=headers)
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

    def _get_stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        if self._stub is None:
            self._channel = self.connection.aio_channel()
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    def _open(self, skill: str, image: ImageInput, prompt: str, stream: bool, settings: Settings,
              extract: Extract) -> AsyncStream[Any, Any]:
        # Encoding happens now, so a bad image fails at the call, not at the first read.
        request = build_request(skill, encode_image(image), prompt, stream=stream, settings=settings,
                                model_name=self.model_name)

        def start() -> Any:
            # A one-item request iterator: the client half-closes after it and Triton still
            # sends every response before it ends the call.
            return self._get_stub().ModelStreamInfer(iter([request]), **self.connection.call_options(self.timeout))

        return AsyncStream(start, ResultBuilder(skill, stream), extract, self.url)

    def chunks(self, skill: str, image: ImageInput, prompt: str = "", *, stream: bool = False,
               settings: Settings | None = None) -> AsyncStream[Chunk, Result]:
        """The raw form of every skill: ``async for`` each parsed response (:class:`Chunk`).

        For callers that forward the output elsewhere (the REST gateway): each chunk carries
        the text delta, new points/boxes, and on the final one ``svg_path``, the finish
        reason and token counts; ``result`` holds the typed result afterwards. ``cancel()``
        (or leaving ``async with``) cancels the request on the server.
        """
        return self._open(skill, image, prompt, stream, settings or Settings(), _each_chunk)

    async def _wait(self, handle: AsyncStream[Any, Any]) -> Any:
        try:
            return await handle.wait()
        finally:
            handle.cancel()  # a no-op after the final response; cancels on error/cancellation

    async def is_ready(self) -> bool:
        """Whether the server answers and the model is loaded (never raises)."""
        try:
            reply = await self._get_stub().ModelReady(
                service_pb2.ModelReadyRequest(name=self.model_name),
                **self.connection.call_options(self.timeout or DEFAULT_TIMEOUT),
            )
        except grpc.RpcError:
            return False
        return bool(reply.ready)

    async def close(self) -> None:
        """Close the channel; running calls fail afterwards."""
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- skills -----------------------------------------------------------------------------

    @overload
    def caption(self, image: ImageInput, length: str = ..., *, stream: Literal[False] = ...,
                max_tokens: int | None = ..., temperature: float | None = ...,
                top_p: float | None = ...) -> Coroutine[Any, Any, Caption]: ...

    @overload
    def caption(self, image: ImageInput, length: str = ..., *, stream: Literal[True],
                max_tokens: int | None = ..., temperature: float | None = ...,
                top_p: float | None = ...) -> AsyncStream[str, Caption]: ...

    def caption(self, image: ImageInput, length: str = "normal", *, stream: bool = False,
                max_tokens: int | None = None, temperature: float | None = None,
                top_p: float | None = None) -> Coroutine[Any, Any, Caption] | AsyncStream[str, Caption]:
        """Describe the image: ``await`` it for a :class:`Caption`, or ``async for`` the deltas."""
        settings = Settings(length=length, max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        handle = self._open("caption", image, "", stream, settings, extract_text)
        return handle if stream else self._wait(handle)

    @overload
    def query(self, image: ImageInput, question: str, *, stream: Literal[False] = ...,
              max_tokens: int | None = ..., temperature: float | None = ...,
              top_p: float | None = ...) -> Coroutine[Any, Any, Answer]: ...

    @overload
    def query(self, image: ImageInput, question: str, *, stream: Literal[True],
              max_tokens: int | None = ..., temperature: float | None = ...,
              top_p: float | None = ...) -> AsyncStream[str, Answer]: ...

    def query(self, image: ImageInput, question: str, *, stream: bool = False,
              max_tokens: int | None = None, temperature: float | None = None,
              top_p: float | None = None) -> Coroutine[Any, Any, Answer] | AsyncStream[str, Answer]:
        """Answer ``question``: ``await`` it for an :class:`Answer`, or ``async for`` the deltas."""
        settings = Settings(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        handle = self._open("query", image, question, stream, settings, extract_text)
        return handle if stream else self._wait(handle)

    @overload
    def point(self, image: ImageInput, object: str, *, stream: Literal[False] = ...,
              max_objects: int | None = ...) -> Coroutine[Any, Any, Points]: ...

    @overload
    def point(self, image: ImageInput, object: str, *, stream: Literal[True],
              max_objects: int | None = ...) -> AsyncStream[Point, Points]: ...

    def point(self, image: ImageInput, object: str, *, stream: bool = False,
              max_objects: int | None = None) -> Coroutine[Any, Any, Points] | AsyncStream[Point, Points]:
        """Point at every ``object``: ``await`` for :class:`Points`, or ``async for`` each point."""
        handle = self._open("point", image, object, stream, Settings(max_objects=max_objects), extract_points)
        return handle if stream else self._wait(handle)

    @overload
    def detect(self, image: ImageInput, object: str, *, stream: Literal[False] = ...,
               max_objects: int | None = ...) -> Coroutine[Any, Any, Detection]: ...

    @overload
    def detect(self, image: ImageInput, object: str, *, stream: Literal[True],
               max_objects: int | None = ...) -> AsyncStream[Box, Detection]: ...

    def detect(self, image: ImageInput, object: str, *, stream: bool = False,
               max_objects: int | None = None) -> Coroutine[Any, Any, Detection] | AsyncStream[Box, Detection]:
        """Box every ``object``: ``await`` for a :class:`Detection`, or ``async for`` each box."""
        handle = self._open("detect", image, object, stream, Settings(max_objects=max_objects), extract_boxes)
        return handle if stream else self._wait(handle)

    async def segment(self, image: ImageInput, object: str, *, max_tokens: int | None = None) -> Segment:
        """Outline ``object``: an SVG path and its bounding box (:class:`Segment`)."""
        handle = self._open("segment", image, object, False, Settings(max_tokens=max_tokens), extract_nothing)
        result: Segment = await self._wait(handle)
        return result
