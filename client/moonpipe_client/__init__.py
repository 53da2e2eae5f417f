"""Python SDK for a moonpipe server (Moondream served by Triton): ``Client``, ``AsyncClient``.

>>> from moonpipe_client import Client
>>> with Client("127.0.0.1:8001") as client:
...     print(client.caption("photo.jpg").caption)
...     for delta in client.query("photo.jpg", "What is in the sky?", stream=True):
...         print(delta, end="", flush=True)

Results are frozen dataclasses (``Caption``, ``Answer``, ``Points``, ``Detection``,
``Segment``) whose ``to_dict()`` gives Moondream's JSON shapes; errors are the typed
exceptions of :mod:`moonpipe_client.errors`.
"""

from __future__ import annotations

from moonpipe_client.aio import AsyncClient
from moonpipe_client.client import DEFAULT_TIMEOUT, DEFAULT_URL, Client
from moonpipe_client.draw import draw_result
from moonpipe_client.errors import (
    Cancelled,
    ConnectionFailed,
    InvalidRequest,
    MoonpipeError,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
)
from moonpipe_client.images import ImageInput, encode_image
from moonpipe_client.results import Answer, Box, Caption, Detection, Point, Points, Result, Segment
from moonpipe_client.stream import AsyncStream, Stream

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "Answer",
    "AsyncClient",
    "AsyncStream",
    "Box",
    "Cancelled",
    "Caption",
    "Client",
    "ConnectionFailed",
    "Detection",
    "ImageInput",
    "InvalidRequest",
    "MoonpipeError",
    "Point",
    "Points",
    "RequestTimeout",
    "Result",
    "Segment",
    "ServerError",
    "ServerUnavailable",
    "Stream",
    "draw_result",
    "encode_image",
]

__version__ = "0.1.0"
