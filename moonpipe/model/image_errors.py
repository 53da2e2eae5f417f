"""Whatever goes wrong with the caller's image is the caller's error.

Decoding runs third-party parsers (Pillow and the codecs under it) over untrusted bytes,
and a malformed file can make them raise almost anything: ``OSError`` and
``SyntaxError`` for the usual damage, but also ``TypeError``, ``KeyError``,
``IndexError``, ``struct.error``, ``ZeroDivisionError``... from a header field of the
wrong type (EXIF tags) or an unusual container flag. Listing the cases cannot keep up,
so :func:`caller_image_errors` turns every exception raised while the caller's bytes
are read, decoded, oriented or converted into ``InvalidRequest("IMAGE: ...")`` (the
client's ``INVALID_ARG``, not retried). Only ``MemoryError`` passes through: running out
of memory is the server's fault (``INTERNAL``, worth a retry), as is anything raised
outside this context (cropping a decoded array, the decode pool itself).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

from moonpipe.errors import InvalidRequest

__all__ = ["ACCEPTED_DESCRIPTION", "caller_image_errors", "image_error"]

# What the messages promise; the list itself lives in image_limits.ACCEPTED_FORMATS.
ACCEPTED_DESCRIPTION = "JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF, PNM, QOI, ICO or PSD"


def image_error(exc: BaseException) -> InvalidRequest:
    """The ``InvalidRequest`` that reports ``exc``, raised by a parser on the caller's
    image. The message names the input (``IMAGE:``) and says what kind of damage it is."""
    if isinstance(exc, InvalidRequest):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        return InvalidRequest(f"IMAGE: image too large to decode safely ({exc})")
    if isinstance(exc, UnidentifiedImageError):
        return InvalidRequest(f"IMAGE: cannot identify image format ({ACCEPTED_DESCRIPTION} expected)")
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, (OSError, EOFError, SyntaxError, ValueError, struct.error)):
        return InvalidRequest(f"IMAGE: truncated or corrupt image data: {detail}")
    return InvalidRequest(f"IMAGE: malformed image data ({type(exc).__name__}: {detail})")


@contextmanager
def caller_image_errors() -> Iterator[None]:
    """Run a block that parses the caller's image; any ``Exception`` but ``MemoryError``
    leaves it as ``InvalidRequest("IMAGE: ...")`` (see the module docstring)."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:
        raise image_error(exc) from exc
