"""Bad requests get the right status and name the field at fault, before any SSE header."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from rest.conftest import STRICT_KEY, GatewayProcess, post

pytestmark = pytest.mark.e2e


def b64uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])  # keep depth, colour, ...
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


IMG = "IMAGE"  # placeholder replaced by the session's image data URI

# (route, body, status, the `param` the error names)
CASES: list[tuple[str, Any, int, str | None]] = [
    ("caption", {"image_url": "data:image/png;base64"}, 400, "image_url"),             # no comma
    ("caption", {"image_url": "data:image/png;base64,@@@@"}, 400, "image_url"),         # not base64
    ("caption", {"image_url": b64uri(b"hello, this is not an image")}, 400, "image_url"),
    ("caption", {"image_url": b64uri(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)}, 400, "image_url"),  # corrupt PNG
    ("caption", {"image_url": b64uri(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "stream": True}, 400,
     "image_url"),  # the engine's refusal arrives before any SSE header
    ("caption", {"image_url": "https://example.com/cat.jpg"}, 400, "image_url"),        # no outbound fetches
    ("caption", {"image_url": "file:///etc/passwd"}, 400, "image_url"),
    ("caption", {"image_url": ""}, 400, "image_url"),
    ("caption", {"image_url": b64uri(png_claiming(9000, 9000))}, 413, "image_url"),  # 81 M pixels
    ("caption", {"image_url": IMG, "stream": "yes"}, 400, "stream"),
    ("caption", {"image_url": IMG, "length": "huge"}, 400, "length"),
    ("caption", {"image_url": IMG, "settings": {"max_tokens": "10"}}, 400, "settings.max_tokens"),
    ("caption", {"image_url": IMG, "settings": {"max_tokens": 0}}, 400, "settings.max_tokens"),
    ("caption", {"image_url": IMG, "settings": {"temperature": -1}}, 400, "settings.temperature"),
    ("caption", {"image_url": IMG, "settings": {"top_p": 0}}, 400, "settings.top_p"),
    ("caption", {"image_url": IMG, "settings": {"variant": "lora-1"}}, 400, "settings.variant"),
    ("caption", {"image_url": IMG, "settings": {"max_objects": 3}}, 400, "settings.max_objects"),
    ("caption", {"image_url": IMG, "colour": "blue"}, 400, "colour"),                   # unknown field
    ("caption", {"image_url": IMG, "model": "moondream3-preview"}, 400, "model"),
    ("caption", {}, 400, "image_url"),                                                  # missing
    ("caption", [1, 2, 3], 400, "body"),                                                # not an object
    ("caption", b"{not json", 400, "body"),
    ("query", {"image_url": IMG, "question": ""}, 400, "question"),                     # refused by the engine
    ("query", {"image_url": IMG, "question": "why?", "reasoning": True}, 400, "reasoning"),
    ("query", {"image_url": IMG, "question": 42}, 400, "question"),
    ("point", {"image_url": IMG, "object": "ball", "spatial_refs": [[0.5, 0.5]]}, 400, "spatial_refs"),
    ("detect", {"image_url": IMG}, 400, "object"),
    ("detect", {"image_url": IMG, "object": "ball", "settings": {"temperature": 0.5}}, 400,
     "settings.temperature"),
    ("detect", {"image_url": IMG, "object": "ball", "stream": True}, 400, "stream"),
    ("segment", {"image_url": IMG, "object": "ball", "stream": True, "spatial_refs": [[0, 0, 1, 1]]}, 400,
     "spatial_refs"),
]


@pytest.mark.parametrize(("route", "body", "status", "param"), CASES,
                         ids=[f"{c[0]}-{n}" for n, c in enumerate(CASES)])
def test_bad_input(gateway: GatewayProcess, image_uri: str, route: str, body: Any, status: int,
                   param: str | None) -> None:
    if isinstance(body, dict):
        body = {k: image_uri if v == IMG else v for k, v in body.items()}
    got, reply = post(f"{gateway.endpoint}/{route}", body)
    assert got == status, reply
    error = reply["error"]
    assert error["param"] == param and error["message"].startswith(param), error
    assert len(error["message"]) > len(param or "") + 10  # says why, not just where


def test_size_limits_and_keys(strict_gateway: GatewayProcess) -> None:
    key = {"X-Moondream-Auth": STRICT_KEY}
    small = b64uri(jpeg((64, 64)), "image/jpeg")
    assert post(f"{strict_gateway.endpoint}/caption", {"image_url": small})[0] == 401
    assert post(f"{strict_gateway.endpoint}/caption", {"image_url": small},
                {"Authorization": "Bearer nope"})[0] == 401
    status, reply = post(f"{strict_gateway.endpoint}/caption", b"x" * 70_000, key)
    assert status == 413 and "limit" in reply["error"]["message"]
    # 40 KB of image in a 54 KB body: under the body limit, over the 32 KiB image limit.
    noise = bytes(range(256)) * 160
    status, reply = post(f"{strict_gateway.endpoint}/caption", {"image_url": b64uri(b"\xff\xd8\xff" + noise)}, key)
    assert (status, reply["error"]["param"]) == (413, "image_url")
    status, _ = post(f"{strict_gateway.endpoint}/caption", {"image_url": small, "settings": {"max_tokens": 1}},
                     {"Authorization": f"Bearer {STRICT_KEY}"})
    assert status == 200


def test_routes_and_methods(gateway: GatewayProcess) -> None:
    import urllib.error
    import urllib.request

    for url, code in ((f"{gateway.endpoint}/caption", 405), (f"{gateway.endpoint}/nothing", 404)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)
        assert info.value.code == code
