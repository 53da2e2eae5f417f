"""End-to-end tests of the sync client against the real server (``triton_server`` fixture)."""

from __future__ import annotations

import io
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from moonpipe_client import (
    Answer,
    Box,
    Caption,
    Client,
    ConnectionFailed,
    Detection,
    InvalidRequest,
    Point,
    Points,
    RequestTimeout,
    Segment,
)
from PIL import Image

pytestmark = pytest.mark.e2e

FINISH_REASONS = {"stop", "length"}
SMALL: dict[str, Any] = {"max_tokens": 6, "temperature": 0.0}


def make_sample_image(path: Path, size: tuple[int, int] = (96, 64)) -> Path:
    """A small synthetic scene: sky, ground, a red square and a blue disc."""
    image = Image.new("RGB", size, (120, 170, 230))
    pixels = np.asarray(image).copy()
    height, width = pixels.shape[:2]
    pixels[height // 2:] = (70, 140, 60)  # ground
    pixels[10:26, 12:28] = (220, 30, 30)  # red square
    yy, xx = np.mgrid[:height, :width]
    pixels[(yy - 40) ** 2 + (xx - 64) ** 2 < 81] = (30, 40, 200)  # blue disc
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def sample_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_image(tmp_path_factory.mktemp("client") / "scene.png")


@pytest.fixture(scope="module")
def client(triton_server: Any) -> Any:
    with Client(triton_server.grpc_url, timeout=300) as client:
        yield client


def _in_unit_square(*values: float) -> bool:
    return all(-1e-6 <= v <= 1 + 1e-6 for v in values)


def _cancelled_count(triton_server: Any) -> float | None:
    """``moonpipe_requests_total{finish_reason="cancelled"}`` summed, if metrics are reachable."""
    url = getattr(triton_server, "metrics_url", None)
    if url is None and getattr(triton_server, "urls", None) is not None:
        url = getattr(triton_server.urls, "metrics", None)
    if not url:
        return None
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    pattern = re.compile(r'^moonpipe_requests_total\{[^}]*finish_reason="cancelled"[^}]*\}\s+([0-9.eE+-]+)', re.M)
    return sum(float(v) for v in pattern.findall(text))


def test_server_is_ready(client: Client) -> None:
    assert client.is_ready()


def test_caption(client: Client, sample_image: Path) -> None:
    result = client.caption(sample_image, length="short", **SMALL)
    assert isinstance(result, Caption)
    assert result.finish_reason in FINISH_REASONS
    assert result.num_input_tokens > 0 and 0 < result.num_output_tokens <= 6
    assert result.to_dict() == {"caption": result.caption}


def test_streamed_caption_matches_the_whole_caption(client: Client, sample_image: Path) -> None:
    whole = client.caption(sample_image, **SMALL)
    with client.caption(sample_image, stream=True, **SMALL) as stream:
        deltas = list(stream)
    assert all(isinstance(d, str) for d in deltas)
    assert stream.result is not None
    assert "".join(deltas) == stream.result.caption
    assert stream.result.caption == whole.caption
    assert stream.result.num_output_tokens == whole.num_output_tokens


def test_query(client: Client, sample_image: Path) -> None:
    result = client.query(sample_image, "What color is the square?", **SMALL)
    assert isinstance(result, Answer)
    assert result.finish_reason in FINISH_REASONS
    assert result.to_dict() == {"answer": result.answer}
    stream = client.query(sample_image, "What color is the square?", stream=True, **SMALL)
    assert "".join(stream) == result.answer
    assert isinstance(stream.result, Answer) and stream.result.answer == result.answer


def test_point(client: Client, sample_image: Path) -> None:
    result = client.point(sample_image, "red square", max_objects=3)
    assert isinstance(result, Points)
    assert result.finish_reason in FINISH_REASONS and len(result.points) <= 3
    assert all(isinstance(p, Point) and _in_unit_square(p.x, p.y) for p in result.points)
    assert result.to_dict() == {"points": [{"x": p.x, "y": p.y} for p in result.points]}
    stream = client.point(sample_image, "red square", stream=True, max_objects=3)
    items = list(stream)
    assert isinstance(stream.result, Points) and tuple(items) == stream.result.points


def test_detect(client: Client, sample_image: Path) -> None:
    result = client.detect(sample_image, "blue disc", max_objects=3)
    assert isinstance(result, Detection)
    assert result.finish_reason in FINISH_REASONS and len(result.objects) <= 3
    for box in result.objects:
        assert isinstance(box, Box) and _in_unit_square(box.x_min, box.y_min, box.x_max, box.y_max)
    assert set(result.to_dict()) == {"objects"}
    assert all(set(o) == {"x_min", "y_min", "x_max", "y_max"} for o in result.to_dict()["objects"])
    stream = client.detect(sample_image, "blue disc", stream=True, max_objects=3)
    items = list(stream)
    assert isinstance(stream.result, Detection) and tuple(items) == stream.result.objects


def test_segment(client: Client, sample_image: Path) -> None:
    result = client.segment(sample_image, "blue disc", max_tokens=40)
    assert isinstance(result, Segment)
    assert result.finish_reason in FINISH_REASONS | {"error"}
    shape = result.to_dict()
    assert set(shape) == {"segments"}
    for segment in shape["segments"]:
        assert isinstance(segment["path"], str)
        if "bbox" in segment:
            assert set(segment["bbox"]) == {"x_min", "y_min", "x_max", "y_max"}


def test_every_image_input_kind(client: Client, sample_image: Path) -> None:
    pil = Image.open(sample_image).convert("RGB")
    inputs: list[Any] = [str(sample_image), sample_image.read_bytes(), pil, np.asarray(pil)]
    jpeg = io.BytesIO()
    pil.save(jpeg, format="JPEG")
    inputs.append(jpeg.getvalue())
    for image in inputs:
        assert isinstance(client.caption(image, max_tokens=2), Caption)


def test_closing_a_stream_early_cancels_it_and_the_server_keeps_working(
        triton_server: Any, client: Client, sample_image: Path) -> None:
    before = _cancelled_count(triton_server)
    stream = client.query(sample_image, "Describe everything in great detail.", stream=True,
                          max_tokens=400, temperature=1.0)
    first = next(stream)
    assert isinstance(first, str)
    stream.close()
    assert stream.done
    assert list(stream) == []
    partial = stream.result  # what had arrived, marked cancelled (unless it had just finished)
    assert partial is not None and partial.answer.startswith(first)
    # The server is not stuck on the cancelled request: new requests go through.
    assert isinstance(client.caption(sample_image, max_tokens=2), Caption)
    if before is not None and partial.finish_reason == "cancelled":
        deadline = time.monotonic() + 30
        while (_cancelled_count(triton_server) or 0) <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (_cancelled_count(triton_server) or 0) > before


def test_leaving_a_with_block_cancels(client: Client, sample_image: Path) -> None:
    with client.caption(sample_image, length="long", stream=True, max_tokens=400, temperature=1.0) as stream:
        for _ in stream:
            break
    assert stream.done
    assert isinstance(client.caption(sample_image, max_tokens=2), Caption)


@pytest.mark.parametrize(("call", "match"), [
    (lambda c, img: c.caption(b""), "IMAGE"),
    (lambda c, img: c.caption(b"definitely not an image"), "IMAGE"),
    (lambda c, img: c.query(img, "   "), "PROMPT"),
    (lambda c, img: c.caption(img, length="epic"), "LENGTH"),
    (lambda c, img: c.caption(img, max_tokens=0), "MAX_TOKENS"),
    (lambda c, img: c.point(img, "cup", max_objects=0), "MAX_OBJECTS"),
])
def test_invalid_requests_raise_invalid_request(client: Client, sample_image: Path, call: Any,
                                                match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        call(client, sample_image)


def test_invalid_streamed_request_raises_on_iteration(client: Client) -> None:
    stream = client.caption(b"", stream=True)
    with pytest.raises(InvalidRequest, match="IMAGE"):
        next(stream)


def test_unreachable_server_is_a_connection_error(sample_image: Path) -> None:
    with Client("127.0.0.1:1", timeout=10) as client:
        assert not client.is_ready()
        with pytest.raises(ConnectionFailed, match=r"127\.0\.0\.1:1"):
            client.caption(sample_image)


def test_timeout_is_a_request_timeout(triton_server: Any, client: Client, sample_image: Path) -> None:
    with Client(triton_server.grpc_url, timeout=0.001) as hurried:
        with pytest.raises(RequestTimeout):
            hurried.query(sample_image, "Describe everything.", max_tokens=400, temperature=1.0)
    assert isinstance(client.caption(sample_image, max_tokens=2), Caption)


def test_one_client_from_many_threads(client: Client, sample_image: Path) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda i: client.caption(sample_image, max_tokens=3 + i % 2), range(12)))
    assert all(isinstance(r, Caption) and r.finish_reason in FINISH_REASONS for r in results)
