"""Bad input gets one final error response naming the input; the engine keeps serving."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from conftest import Caller

pytestmark = pytest.mark.e2e


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (no big allocation)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length + type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


BAD = [
    # (id, skill, image, prompt, settings, expected start of the message)
    ("unknown-skill", "describe", "ok", None, {}, "INVALID_ARG: SKILL:"),
    ("empty-image", "caption", b"", None, {}, "INVALID_ARG: IMAGE:"),
    ("undecodable-image", "caption", b"this is not an image", None, {}, "INVALID_ARG: IMAGE:"),
    ("too-many-pixels", "caption", "huge", None, {}, "INVALID_ARG: IMAGE:"),
    ("missing-prompt", "query", "ok", None, {}, "INVALID_ARG: PROMPT:"),
    ("prompt-too-long", "query", "ok", "why " * 2000, {}, "INVALID_ARG: PROMPT:"),
    ("bad-length", "caption", "ok", None, {"length": "epic"}, "INVALID_ARG: LENGTH:"),
    ("max-tokens-zero", "caption", "ok", None, {"max_tokens": 0}, "INVALID_ARG: MAX_TOKENS:"),
    ("max-tokens-huge", "caption", "ok", None, {"max_tokens": 100000}, "INVALID_ARG: MAX_TOKENS:"),
    ("negative-temperature", "caption", "ok", None, {"temperature": -1.0}, "INVALID_ARG: TEMPERATURE:"),
    ("nan-temperature", "caption", "ok", None, {"temperature": float("nan")}, "INVALID_ARG: TEMPERATURE:"),
    ("top-p-zero", "caption", "ok", None, {"top_p": 0.0}, "INVALID_ARG: TOP_P:"),
    ("max-objects-zero", "point", "ok", "ball", {"max_objects": 0}, "INVALID_ARG: MAX_OBJECTS:"),
]


@pytest.mark.parametrize(("skill", "image", "prompt", "settings", "prefix"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_final_invalid_arg_error(
        moondream: Caller, sample_image_bytes: bytes, skill: str, image: bytes | str,
        prompt: str | None, settings: dict[str, Any], prefix: str) -> None:
    named = {"ok": sample_image_bytes, "huge": _png_claiming(10_000, 10_000)}
    data = named[image] if isinstance(image, str) else image
    replies = moondream.run(skill, data, prompt, **settings)

    assert len(replies) == 1
    assert replies[0].error is not None
    assert prefix in replies[0].error, replies[0].error


def test_missing_required_input_is_refused_naming_it(moondream: Caller, sample_image_bytes: bytes) -> None:
    replies = moondream.run("caption", None)  # no IMAGE
    assert len(replies) == 1 and replies[0].error is not None
    assert "IMAGE" in replies[0].error


def test_wrong_typed_tensor_is_refused_naming_it(moondream: Caller, sample_image_bytes: bytes) -> None:
    replies = moondream.run("caption", sample_image_bytes,
                            max_tokens=(np.array([8.0], dtype=np.float32), "FP32"))
    assert len(replies) == 1 and replies[0].error is not None
    assert "MAX_TOKENS" in replies[0].error


def test_the_engine_still_serves_after_bad_input(moondream: Caller, sample_image_bytes: bytes) -> None:
    moondream.run("caption", b"garbage")
    replies = moondream.run("caption", sample_image_bytes, max_tokens=4)
    assert replies[-1].error is None
    assert replies[-1].scalar("NUM_OUTPUT_TOKENS") > 0
