"""The synchronous client: ``Client(url).caption(image)`` and friends.

Each call opens its own gRPC stream on one shared channel, so a ``Client`` may be used
from many threads at once. Non-streaming calls block until the final response and return
a typed result; ``stream=True`` returns a :class:`~moonpipe_client.stream.Stream` whose
early ``close()`` cancels the request on the server.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, overload

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

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
    ResultBuilder,
    Segment,
)
from moonpipe_client.stream import Extract, Stream

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "Client",
    "check_timeout",
    "extract_boxes",
    "extract_nothing",
    "extract_points",
    "extract_text",
]

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT = 120.0


def extract_text(chunk: Chunk) -> list[str]:
    """Stream items of caption/query: the text delta, if any."""
    return [chunk.text] if chunk.text else []


def extract_points(chunk: Chunk) -> list[Point]:
    """Stream items of point: the newly completed points."""
    return list(chunk.points)


def extract_boxes(chunk: Chunk) -> list[Box]:
    """Stream items of detect: the newly completed boxes."""
    return list(chunk.boxes)


def extract_nothing(chunk: Chunk) -> list[object]:
    """Stream items of skills that do not stream (segment)."""
    return []


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is None or positive; raises ``ValueError`` otherwise."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout}")
    return timeout


class Client:
    """A moonpipe server client over gRPC (sync; thread-safe).

    ``url`` is the server's gRPC address ``host:port`` (``http://`` and ``https://`` in
    front are accepted; https means TLS); ``timeout`` (seconds, None for no limit) bounds
    each whole request, streaming ones included. TLS: ``tls=True`` (system root
    certificates), ``ca_cert`` for a private CA, ``client_cert`` + ``client_key`` for mutual
    TLS (PEM paths or bytes). ``headers`` (``{"authorization": "Bearer ..."}``) are sent as
    gRPC metadata with every call. Errors are the typed exceptions of
    :mod:`moonpipe_client.errors`: ``InvalidRequest``, ``ServerUnavailable``
    (``ConnectionFailed`` when the server cannot be reached), ``RequestTimeout``,
    ``Cancelled``, ``ServerError``; bad connection options raise ``ValueError``.
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
        self._channel = self.connection.channel()
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    # -- plumbing ---------------------------------------------------------------------------

    def _open(self, skill: str, image: ImageInput, prompt: str, stream: bool, settings: Settings,
              extract: Extract) -> Stream[Any, Any]:
        request = build_request(skill, encode_image(image), prompt, stream=stream, settings=settings,
                                model_name=self.model_name)
        call = self._stub.ModelStreamInfer(iter([request]), **self.connection.call_options(self.timeout))
        return Stream(call, ResultBuilder(skill, stream), extract, self.url)

    def is_ready(self) -> bool:
        """Whether the server answers and the model is loaded (never raises)."""
        try:
            reply = self._stub.ModelReady(service_pb2.ModelReadyRequest(name=self.model_name),
                                          **self.connection.call_options(self.timeout or DEFAULT_TIMEOUT))
        except grpc.RpcError:
            return False
        return bool(reply.ready)

    def close(self) -> None:
        """Close the channel; running streams fail afterwards."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- skills -----------------------------------------------------------------------------

    @overload
    def caption(self, image: ImageInput, length: str = ..., *, stream: Literal[False] = ...,
                max_tokens: int | None = ..., temperature: float | None = ...,
                top_p: float | None = ...) -> Caption: ...

    @overload
    def caption(self, image: ImageInput, length: str = ..., *, stream: Literal[True],
                max_tokens: int | None = ..., temperature: float | None = ...,
                top_p: float | None = ...) -> Stream[str, Caption]: ...

    def caption(self, image: ImageInput, length: str = "normal", *, stream: bool = False,
                max_tokens: int | None = None, temperature: float | None = None,
                top_p: float | None = None) -> Caption | Stream[str, Caption]:
        """Describe the image (``length``: short, normal or long).

        With ``stream=True`` returns an iterator of text deltas (its ``result`` holds the
        :class:`Caption` once exhausted); otherwise the :class:`Caption`.
        """
        settings = Settings(length=length, max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        handle = self._open("caption", image, "", stream, settings, extract_text)
        return handle if stream else handle.wait()

    @overload
    def query(self, image: ImageInput, question: str, *, stream: Literal[False] = ...,
              max_tokens: int | None = ..., temperature: float | None = ...,
              top_p: float | None = ...) -> Answer: ...

    @overload
    def query(self, image: ImageInput, question: str, *, stream: Literal[True],
              max_tokens: int | None = ..., temperature: float | None = ...,
              top_p: float | None = ...) -> Stream[str, Answer]: ...

    def query(self, image: ImageInput, question: str, *, stream: bool = False,
              max_tokens: int | None = None, temperature: float | None = None,
              top_p: float | None = None) -> Answer | Stream[str, Answer]:
        """Answer ``question`` about the image (an :class:`Answer`, or text deltas when streaming)."""
        settings = Settings(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        handle = self._open("query", image, question, stream, settings, extract_text)
        return handle if stream else handle.wait()

    @overload
    def point(self, image: ImageInput, object: str, *, stream: Literal[False] = ...,
              max_objects: int | None = ...) -> Points: ...

    @overload
    def point(self, image: ImageInput, object: str, *, stream: Literal[True],
              max_objects: int | None = ...) -> Stream[Point, Points]: ...

    def point(self, image: ImageInput, object: str, *, stream: bool = False,
              max_objects: int | None = None) -> Points | Stream[Point, Points]:
        """Point at every ``object`` in the image (:class:`Points`, or points as they complete)."""
        handle = self._open("point", image, object, stream, Settings(max_objects=max_objects), extract_points)
        return handle if stream else handle.wait()

    @overload
    def detect(self, image: ImageInput, object: str, *, stream: Literal[False] = ...,
               max_objects: int | None = ...) -> Detection: ...

    @overload
    def detect(self, image: ImageInput, object: str, *, stream: Literal[True],
               max_objects: int | None = ...) -> Stream[Box, Detection]: ...

    def detect(self, image: ImageInput, object: str, *, stream: bool = False,
               max_objects: int | None = None) -> Detection | Stream[Box, Detection]:
        """Box every ``object`` in the image (:class:`Detection`, or boxes as they complete)."""
        handle = self._open("detect", image, object, stream, Settings(max_objects=max_objects), extract_boxes)
        return handle if stream else handle.wait()

    def segment(self, image: ImageInput, object: str, *, max_tokens: int | None = None) -> Segment:
        """Outline ``object``: an SVG path and its bounding box (:class:`Segment`)."""
        handle = self._open("segment", image, object, False, Settings(max_tokens=max_tokens), extract_nothing)
        result: Segment = handle.wait()
        return result
