"""The bad-input table: every malformed request ends with one error naming the problem
(or a documented success), and the server is unharmed afterwards.

Two layers reject bad input (docs/limits.md):

* Triton itself checks inputs against ``config.pbtxt`` before the model sees them
  (unknown/missing inputs, datatypes, shapes, byte sizes). Over gRPC streaming its
  messages carry no ``INVALID_ARG`` prefix (the code is lost); they name the input.
* The adapter and the engine check values (image, skill, prompt, settings): those
  messages start with ``INVALID_ARG: <INPUT>: ...``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hostile_images import (
    ORIENTATION_6,
    avif_without_its_image,
    dds_with_unknown_pixel_format,
    ico_wrapping_png,
    jpeg_with_exif,
    psd_with_layers,
    repeated_scan_jpeg,
    seed_files,
)

from reliability.conftest import Target
from reliability.support import (
    RawInput,
    base_inputs,
    corrupt,
    float_input,
    int_input,
    png,
    png_claiming,
    run_raw,
    stub_pids,
    tensor_input,
    text_input,
    wait_idle,
)

pytestmark = pytest.mark.reliability

MAX_IMAGE_BYTES = 33_554_432  # config.pbtxt max_image_bytes
MAX_IMAGE_PIXELS = 40_000_000  # config.pbtxt max_image_pixels


@dataclass(frozen=True, slots=True)
class Expect:
    """``kind``: "adapter" (message starts with ``prefix``), "triton" (Triton's own
    validation: no prefix) or "ok" (a documented success). ``words`` must all appear."""

    kind: str
    prefix: str = ""
    words: tuple[str, ...] = ()


def adapter(prefix: str, *words: str) -> Expect:
    return Expect("adapter", prefix, words)


def triton(*words: str) -> Expect:
    return Expect("triton", "", words)


OK = Expect("ok")
Build = Callable[[bytes], list[RawInput]]


def _without(name: str) -> Build:
    return lambda img: [i for i in base_inputs("caption", img) if i.name != name]


def _plus(*extra: RawInput) -> Build:
    return lambda img: [*base_inputs("caption", img), *extra]


def _caption(image: bytes, **settings: Any) -> Build:
    return lambda img: base_inputs("caption", image, **settings)


def _settings(skill: str, prompt: str | None = None, **settings: Any) -> Build:
    return lambda img: base_inputs(skill, img, prompt, **settings)


def _malformed_bytes_image(img: bytes) -> list[RawInput]:
    # A BYTES element is a 4-byte little-endian length + data: claim 2 GiB, send 3 bytes.
    return [text_input("SKILL", "caption"), RawInput("IMAGE", "BYTES", (1,), b"\xff\xff\xff\x7fabc")]


ROWS: list[tuple[str, Build, Expect]] = [
    # ---- Triton's own validation against config.pbtxt (no prefix over streaming)
    ("missing-skill", _without("SKILL"), triton("missing required input", "SKILL")),
    ("missing-image", _without("IMAGE"), triton("missing required input", "IMAGE")),
    ("no-inputs", lambda img: [], triton("expected number of inputs", "SKILL", "IMAGE")),
    ("extra-input", _plus(text_input("FOO", "bar")), triton("unexpected inference input", "FOO")),
    ("skill-as-int32", lambda img: [tensor_input("SKILL", np.array([1], np.int32), "INT32"),
                                    text_input("IMAGE", img)], triton("SKILL", "data-type", "INT32")),
    ("max-tokens-as-fp32", _plus(float_input("MAX_TOKENS", 8.0)), triton("MAX_TOKENS", "data-type", "FP32")),
    ("temperature-as-fp64", _plus(tensor_input("TEMPERATURE", np.array([0.5], np.float64), "FP64")),
     triton("TEMPERATURE", "data-type", "FP64")),
    ("stream-as-int32", _plus(int_input("STREAM", 1)), triton("STREAM", "data-type", "INT32")),
    ("skill-shape-2", lambda img: [tensor_input("SKILL", np.array([b"caption", b"query"], np.object_), "BYTES"),
                                   text_input("IMAGE", img)], triton("unexpected shape", "SKILL", "[2]")),
    ("image-shape-1x1", lambda img: [text_input("SKILL", "caption"),
                                     tensor_input("IMAGE", np.array([[img]], np.object_), "BYTES")],
     triton("unexpected shape", "IMAGE", "[1,1]")),
    ("prompt-shape-0", _plus(tensor_input("PROMPT", np.array([], np.object_), "BYTES")),
     triton("unexpected shape", "PROMPT", "[0]")),
    ("max-tokens-byte-size", _plus(tensor_input("MAX_TOKENS", np.array([8], np.int16), "INT32", shape=(1,))),
     triton("byte size mismatch", "MAX_TOKENS")),
    ("image-bytes-malformed", _malformed_bytes_image, triton("incomplete string data", "IMAGE")),
    # ---- images (adapter / engine)
    ("empty-image", _caption(b""), adapter("INVALID_ARG: IMAGE:", "empty")),
    ("truncated-png", lambda img: base_inputs("caption", img[: len(img) // 2]),
     adapter("INVALID_ARG: IMAGE:", "truncated or corrupt")),
    ("corrupt-png", lambda img: base_inputs("caption", corrupt(img)), adapter("INVALID_ARG: IMAGE:", "corrupt")),
    ("image-is-text", _caption(b"Hello, I am a sentence, not a picture.\n"),
     adapter("INVALID_ARG: IMAGE:", "cannot identify image format")),
    ("image-is-svg-text", _caption(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
     adapter("INVALID_ARG: IMAGE:", "cannot identify image format")),
    ("bomb-header-100000x100000", _caption(png_claiming(100_000, 100_000)),
     adapter("INVALID_ARG: IMAGE:", "too large")),
    ("header-8000x8000-over-max-pixels", _caption(png_claiming(8000, 8000)),
     adapter("INVALID_ARG: IMAGE:", "8000x8000", f"limit of {MAX_IMAGE_PIXELS}")),
    ("real-png-6400x6400-over-max-pixels", _caption(png(6400, 6400, mode="1")),
     adapter("INVALID_ARG: IMAGE:", "6400x6400", f"limit of {MAX_IMAGE_PIXELS}")),
    ("header-0x16-zero-size", _caption(png_claiming(0, 16)),
     adapter("INVALID_ARG: IMAGE:", "the PNG header is truncated or corrupt")),
    ("image-over-max-bytes", _caption(b"\x89PNG" + b"\x00" * MAX_IMAGE_BYTES),
     adapter("INVALID_ARG: IMAGE:", str(MAX_IMAGE_BYTES + 4), f"limit of {MAX_IMAGE_BYTES}")),
    # ---- hostile images (issue 20): the caller's error, never INTERNAL; bounded work
    ("image-avif-missing-item", _caption(avif_without_its_image()),
     adapter("INVALID_ARG: IMAGE:", "missing or empty image item")),
    ("image-dds-unknown-pixel-format", _caption(dds_with_unknown_pixel_format()),
     adapter("INVALID_ARG: IMAGE:", "DDS images are not accepted")),
    ("image-format-not-accepted", _caption(seed_files()["PCX"]),
     adapter("INVALID_ARG: IMAGE:", "PCX images are not accepted", "JPEG, PNG")),
    ("image-ico-wrapping-huge-png", _caption(ico_wrapping_png(8000, 8000)),
     adapter("INVALID_ARG: IMAGE:", "ICO file holds a 8000x8000 image", f"limit of {MAX_IMAGE_PIXELS}")),
    ("image-jpeg-last-scan-repeated-1000x", _caption(repeated_scan_jpeg(6000, 1000)),
     adapter("INVALID_ARG: IMAGE:", "1010 scans", "limit of 32")),
    # ---- skill and prompt
    ("unknown-skill", _settings("describe"), adapter("INVALID_ARG: SKILL:", "unknown skill", "describe")),
    ("empty-skill", _settings(""), adapter("INVALID_ARG: SKILL:", "unknown skill")),
    ("skill-invalid-utf8", lambda img: [text_input("SKILL", b"cap\xc3\x28"), text_input("IMAGE", img)],
     adapter("INVALID_ARG: SKILL:", "UTF-8")),
    ("query-without-prompt", _settings("query"), adapter("INVALID_ARG: PROMPT:", "non-empty question")),
    ("query-empty-prompt", _settings("query", ""), adapter("INVALID_ARG: PROMPT:", "non-empty question")),
    ("point-blank-prompt", _settings("point", "   \t"), adapter("INVALID_ARG: PROMPT:", "non-empty object")),
    ("prompt-oversized", _settings("query", "why is the sky blue " * 400),
     adapter("INVALID_ARG: PROMPT:", "at most 512")),
    ("prompt-invalid-utf8", lambda img: [*base_inputs("query", img), text_input("PROMPT", b"what \xff\xfe is it")],
     adapter("INVALID_ARG: PROMPT:", "UTF-8")),
    ("length-unknown", _settings("caption", length="epic"), adapter("INVALID_ARG: LENGTH:", "epic")),
    # ---- sampling settings
    ("temperature-nan", _settings("caption", temperature=float("nan")), adapter("INVALID_ARG: TEMPERATURE:", "nan")),
    ("temperature-inf", _settings("caption", temperature=float("inf")), adapter("INVALID_ARG: TEMPERATURE:", "inf")),
    ("temperature-negative", _settings("caption", temperature=-0.5), adapter("INVALID_ARG: TEMPERATURE:", "-0.5")),
    ("temperature-huge", _settings("caption", temperature=1e30), adapter("INVALID_ARG: TEMPERATURE:", "[0, 5]")),
    ("top-p-nan", _settings("caption", top_p=float("nan")), adapter("INVALID_ARG: TOP_P:", "nan")),
    ("top-p-zero", _settings("caption", top_p=0.0), adapter("INVALID_ARG: TOP_P:", "(0, 1]")),
    ("top-p-negative", _settings("caption", top_p=-0.5), adapter("INVALID_ARG: TOP_P:", "-0.5")),
    ("top-p-huge", _settings("caption", top_p=1e30), adapter("INVALID_ARG: TOP_P:", "(0, 1]")),
    ("max-tokens-zero", _settings("caption", max_tokens=0), adapter("INVALID_ARG: MAX_TOKENS:", "[1, 2048]", "0")),
    ("max-tokens-negative", _settings("caption", max_tokens=-7), adapter("INVALID_ARG: MAX_TOKENS:", "-7")),
    ("max-tokens-huge", _settings("caption", max_tokens=2**31 - 1),
     adapter("INVALID_ARG: MAX_TOKENS:", str(2**31 - 1))),
    ("max-objects-zero", _settings("point", "ball", max_objects=0), adapter("INVALID_ARG: MAX_OBJECTS:", "[1, 256]")),
    ("max-objects-negative", _settings("detect", "ball", max_objects=-3), adapter("INVALID_ARG: MAX_OBJECTS:", "-3")),
    ("max-objects-huge", _settings("point", "ball", max_objects=2**31 - 1),
     adapter("INVALID_ARG: MAX_OBJECTS:", str(2**31 - 1))),
    # ---- documented successes (docs/limits.md)
    ("image-1x1", _caption(png(1, 1), max_tokens=4), OK),
    ("image-1x4000-strip", _caption(png(1, 4000), max_tokens=4), OK),
    ("image-4000x1-strip", _caption(png(4000, 1), max_tokens=4), OK),
    ("image-grayscale-with-alpha", _caption(png(64, 48, mode="LA", color=(10, 20)), max_tokens=4), OK),
    ("image-photoshop-multi-layer", _caption(psd_with_layers(64, 48, num_layers=3), max_tokens=4), OK),
    ("image-exif-xresolution-as-text", _caption(jpeg_with_exif([ORIENTATION_6, (0x011A, 2, 1, b"6\x00\x00\x00")]),
                                                max_tokens=4), OK),
    ("image-exif-make-as-rational", _caption(jpeg_with_exif([ORIENTATION_6, (0x010F, 5, 1, b"\x06\x00\x00\x00")]),
                                             max_tokens=4), OK),
    ("image-exif-orientation-as-text", _caption(jpeg_with_exif([(0x0112, 2, 1, b"6\x00\x00\x00")]),
                                                max_tokens=4), OK),
    ("max-tokens-at-limit-2048", _settings("caption", max_tokens=2048, temperature=0.0), OK),
    ("skill-upper-case-padded", _settings(" CAPTION ", max_tokens=4), OK),
    ("prompt-unicode", _settings("query", "qu'est-ce que c'est ? 这是什么 🐱", max_tokens=4), OK),
    ("max-objects-at-limit-256", _settings("detect", "ball", max_objects=256), OK),
]


@pytest.fixture(scope="module")
def stubs_at_start(target: Target) -> list[int]:
    """The stub pids when the table started (they must be the same at the end)."""
    pids = stub_pids(target.pgid)
    assert pids, "no triton_python_backend_stub process in the server's process group"
    return pids


@pytest.mark.parametrize(("build", "expect"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_row(target: Target, stubs_at_start: list[int], sample_image_bytes: bytes,
                       build: Build, expect: Expect) -> None:
    outcome = run_raw(target.grpc_url, build(sample_image_bytes), timeout=120)

    assert outcome.rpc_error is None, outcome.rpc_error
    if expect.kind == "ok":
        assert outcome.error is None, outcome.error
        assert outcome.final
        assert outcome.last("FINISH_REASON") in ("stop", "length")
        return
    assert outcome.error is not None, f"expected an error, got {len(outcome.responses)} responses"
    assert not outcome.responses, "an error must be the request's only response"
    message = outcome.error
    if expect.kind == "adapter":
        assert message.startswith(expect.prefix), message
    else:  # Triton's own check: the code is lost on streaming and no prefix is added
        assert not message.startswith(("INVALID_ARG", "INTERNAL", "UNAVAILABLE")), message
    for word in expect.words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"


def test_table_is_at_least_25_rows() -> None:
    assert len(ROWS) >= 63
    assert len({r[0] for r in ROWS}) == len(ROWS)


def test_after_the_table_the_server_is_unharmed(target: Target, stubs_at_start: list[int],
                                                sample_image_bytes: bytes) -> None:
    from moonpipe_client import Client

    with Client(target.grpc_url, timeout=60) as client:
        assert client.is_ready()
        answer = client.query(sample_image_bytes, "what is on the table?", max_tokens=8, temperature=0.0)
        assert answer.finish_reason in ("stop", "length") and answer.num_output_tokens > 0
        caption = client.caption(sample_image_bytes, max_tokens=8)
        assert caption.num_output_tokens > 0
    assert wait_idle(target.metrics_url) == {k: 0.0 for k in wait_idle(target.metrics_url)}
    assert stub_pids(target.pgid) == stubs_at_start, "the stub process was replaced (it crashed)"
