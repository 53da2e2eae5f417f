"""What one request's image may cost, checked before and while it is decoded.

- **Formats**: only :data:`ACCEPTED_FORMATS` are opened. Pillow knows some forty
  formats, most of them rare (FITS, McIdas, SPIDER, PCX...); each parser is attack
  surface, so the rest are refused by name (:func:`open_accepted`).
- **Pixels** before any full decode: Pillow reads sizes from headers, but its ICO reader
  decodes the embedded image inside ``Image.open`` (an ICO directory may claim 16x16 and
  wrap a 13000x13000 PNG). :func:`check_container` reads the sizes of an ICO's embedded
  images from their own headers first.
- **Progressive JPEG scans**: each scan costs a pass over every block of the image, and
  libjpeg only warns about a scan repeated a thousand times (a 286 KiB file decodes for
  tens of seconds). :func:`count_jpeg_scans` walks the markers (no decoding) so a file
  with more than ``max_scans`` scans is refused up front.
- **Time**: :class:`Deadline` bounds the rest. Decoders pull their input through
  :class:`DeadlineStream`, which raises once the deadline passed, in pieces of
  :data:`DECODE_BLOCK_BYTES` (Pillow's default is 64 KiB: enough repeated JPEG scans to
  decode for a minute); the decoder checks in between steps too. A step in progress (one
  piece of input, a resize) is not interrupted: the pixel and scan limits bound it.

Every refusal is an ``InvalidRequest("IMAGE: ...")`` that says which limit was hit.
"""

from __future__ import annotations

import io
import re
import struct
import time
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from moonpipe.errors import InvalidRequest, raise_limit_hint
from moonpipe.model.image_errors import ACCEPTED_DESCRIPTION

__all__ = [
    "ACCEPTED_FORMATS",
    "DECODE_BLOCK_BYTES",
    "Deadline",
    "DeadlineStream",
    "check_container",
    "count_jpeg_scans",
    "open_accepted",
]

# Pillow format names (``Image.open(formats=...)``); MPO files open through "JPEG".
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "PPM", "QOI", "ICO", "PSD")

DECODE_BLOCK_BYTES = 4096  # input a decoder gets between two deadline checks
_JPEG_MAGIC = b"\xff\xd8\xff"
_ICO_MAGIC = b"\x00\x00\x01\x00"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# In entropy-coded data 0xFF is followed by 0x00 (stuffing), RST0-7 or more 0xFF (fill);
# anything else is the next marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI = 0xDA, 0xD9


@dataclass(frozen=True, slots=True)
class Deadline:
    """The time one image may take to decode; :meth:`check` raises once it has passed."""

    seconds: float
    until: float  # time.monotonic()

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def check(self) -> None:
        if time.monotonic() > self.until:
            raise InvalidRequest(
                f"IMAGE: decoding took longer than {self.seconds:g} s, the limit per image; "
                f"send a smaller or simpler image (a plain JPEG or PNG), {raise_limit_hint('max_image_decode_ms')}")


class DeadlineStream(io.BytesIO):
    """The caller's bytes as the file Pillow reads; every read checks the deadline, so a
    decoder that pulls its input chunk by chunk stops soon after it passed."""

    def __init__(self, data: bytes, deadline: Deadline | None) -> None:
        super().__init__(data)
        self._deadline = deadline

    def read(self, size: int | None = -1, /) -> bytes:
        if self._deadline is not None:
            self._deadline.check()
        return super().read(size)


def _sniff_format(prefix: bytes) -> str | None:
    """The first Pillow format whose signature check accepts ``prefix`` (None: none does)."""
    Image.init()
    for name in Image.ID:
        _, accept = Image.OPEN[name]
        if accept is not None and accept(prefix):
            return name
    return None


def open_accepted(stream: DeadlineStream) -> Image.Image:
    """``Image.open`` restricted to :data:`ACCEPTED_FORMATS`; a file of another format is
    refused by name. Raises InvalidRequest, or the parser's own exception for a damaged
    header (the caller classifies it)."""
    try:
        return Image.open(stream, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        found = _sniff_format(stream.getvalue()[:16])
        if found is None:
            raise
        if found in ACCEPTED_FORMATS:
            raise InvalidRequest(f"IMAGE: the {found} header is truncated or corrupt") from None
        raise InvalidRequest(f"IMAGE: {found} images are not accepted; send {ACCEPTED_DESCRIPTION}") from None


def count_jpeg_scans(data: bytes) -> int:
    """Scans (SOS segments) of the first image of a JPEG file, from its marker structure
    alone: segments are skipped by their length, entropy-coded data up to the next marker."""
    pos, scans, end = 2, 0, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:  # junk between segments: libjpeg skips to the next marker
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length field
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


def _icon_sizes(data: bytes) -> list[tuple[int, int]]:
    """(width, height) of every image embedded in an ICO file, from the embedded PNG's
    IHDR or BMP info header (not from the directory, which may say anything)."""
    count = struct.unpack_from("<H", data, 4)[0]
    sizes = []
    for index in range(count):
        entry = 6 + 16 * index
        if entry + 16 > len(data):
            break
        offset = struct.unpack_from("<I", data, entry + 12)[0]
        if data[offset:offset + 8] == _PNG_MAGIC and offset + 24 <= len(data):
            sizes.append(struct.unpack_from(">II", data, offset + 16))
        elif offset + 12 <= len(data):  # BITMAPINFOHEADER: the height counts the mask too
            width, height = struct.unpack_from("<ii", data, offset + 4)
            sizes.append((abs(width), abs(height) // 2))
    return sizes


def check_container(data: bytes, *, max_pixels: int, max_scans: int | None) -> None:
    """Header-only checks that must run before ``Image.open``: the embedded images of an
    ICO file against ``max_pixels``, the scans of a JPEG against ``max_scans``."""
    if data.startswith(_ICO_MAGIC) and len(data) >= 6:
        for width, height in _icon_sizes(data):
            if width * height > max_pixels:
                raise InvalidRequest(f"IMAGE: the ICO file holds a {width}x{height} image: "
                                     f"{width * height} pixels exceeds the limit of {max_pixels}")
    elif max_scans is not None and data.startswith(_JPEG_MAGIC):
        scans = count_jpeg_scans(data)
        if scans > max_scans:
            raise InvalidRequest(f"IMAGE: the JPEG has {scans} scans, over the limit of {max_scans} "
                                 f"(progressive JPEGs normally have about 10); re-encode it, "
                                 f"{raise_limit_hint('max_image_scans')}")
