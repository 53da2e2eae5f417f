"""Turn a request's image field (a data URI, or bare base64 as Moondream Station accepts)
into image file bytes, refusing what the engine could not use before it travels.

No URL is ever fetched: the gateway makes no outbound requests (no SSRF), so
``http(s)://`` URLs get a 400 that says to send a data URI. The MIME label of a data URI
is not trusted (Moondream's client labels pre-encoded images as it likes): the bytes are
sniffed for a known image signature instead; decoding itself is the engine's job.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

from moonpipe_gateway.errors import ApiError

__all__ = ["IMAGE_FORMATS", "decode_image_url", "sniff_format"]

IMAGE_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"
_DATA_URI = re.compile(r"^data:(?P<mime>[^,;]*)(?P<params>(?:;[^,;]*)*),(?P<data>.*)$", re.DOTALL)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_BASE64_CHARS = re.compile(rb"^[A-Za-z0-9+/_-]*={0,2}$")
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"BM", "bmp"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start with (``jpeg``, ``png``, ``webp``...), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for offset, magic, name in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return name
    return None


def _b64decode(text: str, field: str) -> bytes:
    try:  # the usual case, at C speed: standard alphabet, padded, no whitespace
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        return _b64decode_tolerant(text, field)


def _b64decode_tolerant(text: str, field: str) -> bytes:
    """Base64 with whitespace, the URL-safe alphabet or no padding; 400 for anything else."""
    packed = re.sub(r"\s+", "", text).encode("ascii", errors="replace")
    if not _BASE64_CHARS.match(packed):
        raise ApiError(400, f"{field}: the image data is not valid base64 (characters outside A-Z a-z 0-9 + / =)",
                       param=field, code="invalid_image")
    padded = packed + b"=" * (-len(packed) % 4)
    try:
        if b"-" in packed or b"_" in packed:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{field}: the image data is not valid base64 ({exc})", param=field,
                       code="invalid_image") from None


def _check_size(num_bytes: int, max_bytes: int, field: str) -> None:
    if num_bytes > max_bytes:
        raise ApiError(413, f"{field}: the image is {num_bytes} bytes, over the limit of {max_bytes} bytes; "
                       "send a smaller or more compressed image", param=field, code="image_too_large")


def decode_image_url(value: str, field: str, max_bytes: int) -> bytes:
    """The image bytes of ``value`` (``data:image/...;base64,...`` or bare base64).

    Raises :class:`ApiError` 400 naming ``field`` for remote URLs, malformed data URIs,
    bad base64 or bytes that are no image, and 413 for an image over ``max_bytes``.
    """
    text = value.strip()
    if not text:
        raise ApiError(400, f"{field}: empty; send the image as a data URI (data:image/jpeg;base64,...)",
                       param=field, code="invalid_image")
    scheme = _SCHEME.match(text)
    if scheme and scheme.group(1).lower() in ("http", "https"):
        raise ApiError(400, f"{field}: remote image URLs are not fetched (the gateway makes no outbound "
                       "requests); download the image and send it as a data URI: "
                       "data:image/jpeg;base64,<base64 of the file>", param=field, code="remote_image_url")
    if text.startswith("data:"):
        match = _DATA_URI.match(text)
        if match is None:
            raise ApiError(400, f"{field}: malformed data URI (expected data:image/<type>;base64,<data>)",
                           param=field, code="invalid_image")
        params = [p.strip().lower() for p in match.group("params").split(";") if p.strip()]
        payload = match.group("data")
        if "base64" in params:
            _check_size(len(payload) * 3 // 4, max_bytes, field)
            data = _b64decode(payload, field)
        else:
            data = unquote_to_bytes(payload)
    elif scheme:  # base64 has no ':', so this is some other URL
        raise ApiError(400, f"{field}: unsupported URL scheme {scheme.group(1)!r}; send a data URI "
                       "(data:image/jpeg;base64,...)", param=field, code="invalid_image")
    else:  # bare base64, as Moondream Station accepts
        _check_size(len(text) * 3 // 4, max_bytes, field)
        data = _b64decode(text, field)
    _check_size(len(data), max_bytes, field)
    if not data:
        raise ApiError(400, f"{field}: the data URI holds no image bytes", param=field, code="invalid_image")
    if sniff_format(data) is None:
        raise ApiError(400, f"{field}: the data is not an image (starts with {data[:8]!r}); send {IMAGE_FORMATS} "
                       "file bytes", param=field, code="invalid_image")
    return data
