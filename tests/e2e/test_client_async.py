"""End-to-end tests of the asyncio client against the real server (``triton_server`` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from moonpipe_client import (
    Answer,
    AsyncClient,
    Caption,
    ConnectionFailed,
    Detection,
    InvalidRequest,
    Points,
    RequestTimeout,
    Segment,
)
from PIL import Image

pytestmark = pytest.mark.e2e

FINISH_REASONS = {"stop", "length"}
SMALL: dict[str, Any] = {"max_tokens": 6, "temperature": 0.0}


@pytest.fixture(scope="module")
def sample_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("client_async") / "scene.png"
    pixels = np.zeros((64, 80, 3), dtype=np.uint8)
    pixels[:32] = (120, 170, 230)
    pixels[32:] = (70, 140, 60)
    pixels[8:24, 8:24] = (220, 30, 30)
    Image.fromarray(pixels).save(path)
    return path


def test_every_skill_awaited(triton_server: Any, sample_image: Path) -> None:
    async def run() -> None:
        async with AsyncClient(triton_server.grpc_url, timeout=300) as client:
            assert await client.is_ready()
            caption = await client.caption(sample_image, length="short", **SMALL)
            assert isinstance(caption, Caption) and caption.finish_reason in FINISH_REASONS
            assert caption.num_input_tokens > 0
            answer = await client.query(sample_image, "Is there a square?", **SMALL)
            assert isinstance(answer, Answer) and answer.to_dict() == {"answer": answer.answer}
            points = await client.point(sample_image, "red square", max_objects=3)
            assert isinstance(points, Points) and len(points.points) <= 3
            detection = await client.detect(sample_image, "red square", max_objects=3)
            assert isinstance(detection, Detection) and len(detection.objects) <= 3
            segment = await client.segment(sample_image, "red square", max_tokens=40)
            assert isinstance(segment, Segment) and set(segment.to_dict()) == {"segments"}

    asyncio.run(run())


def test_every_streaming_skill(triton_server: Any, sample_image: Path) -> None:
    async def run() -> None:
        async with AsyncClient(triton_server.grpc_url, timeout=300) as client:
            whole = await client.caption(sample_image, **SMALL)
            stream = client.caption(sample_image, stream=True, **SMALL)
            deltas = [d async for d in stream]
            assert isinstance(stream.result, Caption)
            assert "".join(deltas) == stream.result.caption == whole.caption
            stream_q = client.query(sample_image, "What is red?", stream=True, **SMALL)
            assert "".join([d async for d in stream_q]) == (await client.query(sample_image, "What is red?",
                                                                               **SMALL)).answer
            stream_p = client.point(sample_image, "red square", stream=True, max_objects=3)
            points = [p async for p in stream_p]
            assert isinstance(stream_p.result, Points) and tuple(points) == stream_p.result.points
            stream_d = client.detect(sample_image, "red square", stream=True, max_objects=3)
            boxes = [b async for b in stream_d]
            assert isinstance(stream_d.result, Detection) and tuple(boxes) == stream_d.result.objects

    asyncio.run(run())


def test_many_concurrent_requests(triton_server: Any, sample_image: Path) -> None:
    async def run() -> list[Any]:
        async with AsyncClient(triton_server.grpc_url, timeout=300) as client:
            jobs: list[Coroutine[Any, Any, Any]] = [client.caption(sample_image, max_tokens=3) for _ in range(12)]
            jobs += [client.detect(sample_image, "square", max_objects=2) for _ in range(4)]
            return await asyncio.gather(*jobs)

    results = asyncio.run(run())
    assert [type(r) for r in results] == [Caption] * 12 + [Detection] * 4
    assert all(r.finish_reason in FINISH_REASONS for r in results)


def test_early_close_cancels_and_the_server_keeps_working(triton_server: Any, sample_image: Path) -> None:
    async def run() -> None:
        async with AsyncClient(triton_server.grpc_url, timeout=300) as client:
            async with client.query(sample_image, "Describe everything in detail.", stream=True,
                                    max_tokens=400, temperature=1.0) as stream:
                async for _ in stream:
                    break
            assert stream.done
            stream2 = client.caption(sample_image, length="long", stream=True, max_tokens=400, temperature=1.0)
            await stream2.__anext__()
            await stream2.aclose()
            assert stream2.done and [d async for d in stream2] == []
            # Cancelling an awaiting task cancels its gRPC call as well.
            task = asyncio.ensure_future(client.query(sample_image, "Describe it.", max_tokens=400,
                                                      temperature=1.0))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert isinstance(await client.caption(sample_image, max_tokens=2), Caption)

    asyncio.run(run())


def test_errors_map_to_typed_exceptions(triton_server: Any, sample_image: Path) -> None:
    async def run() -> None:
        async with AsyncClient(triton_server.grpc_url, timeout=300) as client:
            with pytest.raises(InvalidRequest, match="IMAGE"):
                await client.caption(b"")
            with pytest.raises(InvalidRequest, match="PROMPT"):
                await client.detect(sample_image, "")
            with pytest.raises(InvalidRequest, match="IMAGE"):
                async for _ in client.caption(b"not an image", stream=True):
                    pass
        async with AsyncClient("127.0.0.1:1", timeout=10) as unreachable:
            assert not await unreachable.is_ready()
            with pytest.raises(ConnectionFailed, match=r"127\.0\.0\.1:1"):
                await unreachable.caption(sample_image)
        async with AsyncClient(triton_server.grpc_url, timeout=0.001) as hurried:
            with pytest.raises(RequestTimeout):
                await hurried.query(sample_image, "Describe it.", max_tokens=400, temperature=1.0)

    asyncio.run(run())
