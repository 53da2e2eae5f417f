"""Moondream's official Python client (``moondream`` 2.6.1, unchanged) against the gateway."""

from __future__ import annotations

import random
import re
import urllib.error
from typing import Any

import moondream as md
import pytest
from conftest import Caller, ServerHandle
from moondream.types import Base64EncodedImage
from moonpipe_client import Client
from PIL import Image

from rest.conftest import STRICT_KEY, GatewayProcess

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0.0, "max_tokens": 12}
# Sampling from a nearly flat distribution never ends with an empty answer (eos first).
NONEMPTY = {"temperature": 5.0, "top_p": 1.0}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def numbers(path: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(path)]


@pytest.fixture
def vl(gateway: GatewayProcess) -> Any:
    return md.vl(endpoint=gateway.endpoint)


@pytest.fixture
def image(image_uri: str) -> Base64EncodedImage:
    """The PNG passed through as it is (the client re-encodes PIL images as JPEG)."""
    return Base64EncodedImage(image_url=image_uri)


def test_caption_and_query_match_direct_grpc(vl: Any, image: Base64EncodedImage, triton_server: ServerHandle,
                                             sample_image_bytes: bytes) -> None:
    with Client(triton_server.grpc_url) as direct:
        want_caption = direct.caption(sample_image_bytes, "short", max_tokens=12, temperature=0.0).caption
        want_answer = direct.query(sample_image_bytes, "What is red?", max_tokens=12, temperature=0.0).answer
    assert vl.caption(image, length="short", settings=GREEDY) == {"caption": want_caption}
    assert vl.query(image, "What is red?", settings=GREEDY) == {"answer": want_answer}


def test_point_and_detect_match_direct_grpc(vl: Any, image: Base64EncodedImage, triton_server: ServerHandle,
                                            sample_image_bytes: bytes) -> None:
    with Client(triton_server.grpc_url) as direct:
        want_points = direct.point(sample_image_bytes, "ball", max_objects=3).to_dict()
        want_objects = direct.detect(sample_image_bytes, "ball", max_objects=3).to_dict()
    points = vl.point(image, "ball", settings={"max_objects": 3})
    objects = vl.detect(image, "ball", settings={"max_objects": 3})
    assert points == want_points and 1 <= len(points["points"]) <= 3
    assert objects == want_objects and 1 <= len(objects["objects"]) <= 3
    for box in objects["objects"]:
        assert 0 <= box["x_min"] <= box["x_max"] <= 1 and 0 <= box["y_min"] <= box["y_max"] <= 1


def test_segment_path_is_relative_to_its_box(vl: Any, image: Base64EncodedImage, moondream: Caller,
                                             sample_image_bytes: bytes) -> None:
    settings = {"temperature": 0.0, "max_tokens": 40}
    got = vl.segment(image, "ball", settings=settings)
    replies = moondream.run("segment", sample_image_bytes, "ball", temperature=0.0, max_tokens=40)
    final = replies[-1]
    x_min, y_min, x_max, y_max = (float(v) for v in final.outputs["BOXES"].reshape(-1)[:4])
    assert got["bbox"] == pytest.approx({"x_min": x_min, "y_min": y_min, "x_max": x_max, "y_max": y_max})
    image_path = final.scalar("SVG_PATH")
    assert got["path"].split()[0] == "M" and len(numbers(got["path"])) == len(numbers(image_path)) > 0
    # X = x_min + px * (x_max - x_min): mapping the gateway's path back gives the engine's.
    back = [x_min + p * (x_max - x_min) if i % 2 == 0 else y_min + p * (y_max - y_min)
            for i, p in enumerate(numbers(got["path"]))]
    assert back == pytest.approx(numbers(image_path), abs=2e-4)


def test_streamed_caption_and_query_equal_the_whole_answer(vl: Any, image: Base64EncodedImage) -> None:
    whole = vl.caption(image, settings=GREEDY)["caption"]
    chunks = list(vl.caption(image, stream=True, settings=GREEDY)["caption"])
    assert "".join(chunks) == whole and all(chunks)  # no stray "" from a final chunk
    answer = vl.query(image, "Where is the ball?", settings=GREEDY)["answer"]
    assert "".join(vl.query(image, "Where is the ball?", stream=True, settings=GREEDY)["answer"]) == answer


def test_streamed_segment_sends_bbox_path_deltas_and_final(vl: Any, image: Base64EncodedImage,
                                                           moondream: Caller, sample_image_bytes: bytes) -> None:
    settings = {"temperature": 0.0, "max_tokens": 40}
    whole = vl.segment(image, "ball", settings=settings)
    events = list(vl.segment(image, "ball", stream=True, settings=settings))
    assert events[0] == {"bbox": whole["bbox"]}
    assert events[-1] == {"path": whole["path"], "bbox": whole["bbox"], "completed": True}
    deltas = "".join(e["chunk"] for e in events[1:-1])
    assert len(events) > 3
    # The deltas are the model's raw path text rescaled from its 960-unit box viewbox.
    raw = "".join(r.text() for r in moondream.run("segment", sample_image_bytes, "ball", temperature=0.0,
                                                  max_tokens=40, stream=True))
    assert numbers(deltas) == pytest.approx([n / 960 for n in numbers(raw)], abs=1e-4)


def test_pil_images_and_caption_lengths(vl: Any) -> None:
    picture = Image.new("RGB", (96, 64), (30, 160, 60))
    for length in ("short", "normal", "long"):
        caption = vl.caption(picture, length=length, settings={**NONEMPTY, "max_tokens": 4})["caption"]
        assert isinstance(caption, str) and caption


def test_text_only_query_is_a_clear_400(vl: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        vl.query(None, "What is the capital of France?")
    assert info.value.code == 400
    assert b"moondream2 answers questions about an image" in info.value.read()


def test_endpoint_with_a_trailing_slash(gateway: GatewayProcess, image: Base64EncodedImage) -> None:
    trailing = md.vl(endpoint=gateway.endpoint + "/")
    assert trailing.detect(image, "ball", settings={"max_objects": 1})["objects"]


def test_api_keys_unknown_model_and_limits(strict_gateway: GatewayProcess, image: Base64EncodedImage) -> None:
    def code_of(client: Any, *args: Any, **kw: Any) -> int:
        with pytest.raises(urllib.error.HTTPError) as info:
            client.caption(*args, **kw)
        return int(info.value.code)

    assert code_of(md.vl(endpoint=strict_gateway.endpoint), image) == 401
    assert code_of(md.vl(endpoint=strict_gateway.endpoint, api_key="wrong"), image) == 401
    keyed = md.vl(endpoint=strict_gateway.endpoint, api_key=STRICT_KEY)
    assert keyed.caption(image, settings={**NONEMPTY, "max_tokens": 2})["caption"]
    assert code_of(md.vl(endpoint=strict_gateway.endpoint, api_key=STRICT_KEY, model="moondream3-preview"),
                   image) == 400
    noise = Image.frombytes("RGB", (256, 256), random.Random(0).randbytes(256 * 256 * 3))
    assert code_of(keyed, noise) == 413  # ~150 KB of JPEG: over the 64 KiB body limit
    # A long sampled caption cannot finish within the 1 s request timeout.
    assert code_of(keyed, image, settings={"max_tokens": 2000, "temperature": 5.0, "top_p": 1.0}) == 504


def test_unreachable_triton_is_502_and_not_ready(start_gateway: Any, image: Base64EncodedImage) -> None:
    from moonpipe.triton_local import free_port

    gw = start_gateway(triton_url=f"127.0.0.1:{free_port()}")
    with pytest.raises(urllib.error.HTTPError) as info:
        md.vl(endpoint=gw.endpoint).caption(image)
    assert info.value.code == 502 and b"cannot reach Triton" in info.value.read()
    with pytest.raises(urllib.error.HTTPError) as health:
        urllib.request.urlopen(f"{gw.url}/health", timeout=10)
    assert health.value.code == 503


def test_health_and_models(gateway: GatewayProcess) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{gateway.url}/health", timeout=10) as resp:
        assert json.loads(resp.read()) == {"status": "ready", "model": "moondream"}
    with urllib.request.urlopen(f"{gateway.endpoint}/models", timeout=10) as resp:
        assert [m["id"] for m in json.loads(resp.read())["data"]] == ["moondream", "moondream2"]
