"""Hostile and unusual image files for the image-path tests (unit, engine and server).

Everything is generated here with Pillow or by hand, so no binary fixture is committed:

- :func:`seed_files`: one small valid file per format Pillow can write and read back
  (plus a hand-built multi-layer PSD, which Pillow cannot write), the seeds of the fuzz;
- :func:`mutated_images`: a Hypothesis strategy that damages a seed (bit flips, random
  bytes, truncation, insertions, deletions, repeated spans, extreme integers), biased
  towards the headers where parsers make their decisions;
- directed attacks: a multi-layer PSD, an ICO whose directory claims 16x16 but wraps a
  huge PNG, a progressive JPEG whose last scan repeats (slow to decode), and JPEGs whose
  EXIF holds values of the wrong type under standard tags (:func:`jpeg_with_exif`).
"""

from __future__ import annotations

import functools
import io
import struct
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

__all__ = [
    "ORIENTATION_6",
    "avif_without_its_image",
    "dds_with_unknown_pixel_format",
    "derandomized",
    "ico_wrapping_png",
    "jpeg_with_exif",
    "mutated_images",
    "psd_with_layers",
    "repeated_scan_jpeg",
    "seed_files",
]


# ---------------------------------------------------------------- seeds


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.copy().save(buf, format=fmt, **params)  # a copy: some writers leave settings on the image
    return buf.getvalue()


def _picture(width: int = 24, height: int = 16) -> Image.Image:
    """A small picture with structure (gradients, so codecs have something to encode)."""
    img = Image.new("RGB", (width, height))
    img.putdata([((x * 255) // width, (y * 255) // height, (x * y) % 256)
                 for y in range(height) for x in range(width)])
    return img


# Formats Pillow 13 writes without extra programs (Ghostscript for EPS, handlers for
# BUFR/GRIB/HDF5/WMF are absent), with the mode each needs.
_WRITABLE: dict[str, str] = {
    "AVIF": "RGB", "BLP": "P", "BMP": "RGB", "DDS": "RGB", "DIB": "RGB", "GIF": "P",
    "ICNS": "RGB", "ICO": "RGBA", "IM": "RGB", "JPEG": "RGB", "JPEG2000": "RGB", "MSP": "1",
    "PCX": "RGB", "PNG": "RGBA", "PPM": "RGB", "QOI": "RGB", "SGI": "RGB", "SPIDER": "F",
    "TGA": "RGB", "TIFF": "RGB", "WEBP": "RGB", "XBM": "1",
}


@functools.cache
def seed_files() -> dict[str, bytes]:
    """Name -> a small valid file: every format Pillow writes, plus variants that reach
    other code paths (progressive JPEG with EXIF, multi-frame GIF/MPO/TIFF, APNG,
    16-bit PNG, CMYK JPEG, palette PNG with transparency, multi-layer PSD, PNG-in-ICO)."""
    pic = _picture()
    small = pic.resize((16, 16))
    seeds = {fmt: _encode(small if fmt == "ICNS" else pic.convert(mode), fmt)
             for fmt, mode in _WRITABLE.items()}
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate on display
    exif[0x010F] = "moonpipe"  # Make
    seeds["JPEG-progressive-exif"] = _encode(pic, "JPEG", progressive=True, exif=exif)
    seeds["JPEG-CMYK"] = _encode(pic.convert("CMYK"), "JPEG")
    seeds["PNG-exif"] = _encode(pic, "PNG", exif=exif)
    seeds["PNG-16bit"] = _encode(pic.convert("I;16"), "PNG")
    seeds["PNG-palette-transparency"] = _encode(pic.convert("P"), "PNG", transparency=0)
    seeds["WEBP-exif"] = _encode(pic, "WEBP", exif=exif)
    seeds["TIFF-exif-lzw"] = _encode(pic, "TIFF", exif=exif, compression="tiff_lzw")
    for name, fmt in (("GIF-animated", "GIF"), ("PNG-animated", "PNG"), ("MPO", "MPO"),
                      ("TIFF-multipage", "TIFF")):
        second = pic.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # fresh: writers annotate frames
        seeds[name] = _encode(pic, fmt, save_all=True, append_images=[second])
    seeds["PSD-layers"] = psd_with_layers(24, 16, num_layers=2)
    seeds["ICO-png"] = _encode(pic.convert("RGBA"), "ICO", sizes=[(24, 16)], bitmap_format="png")
    # Raw EXIF near the start of the file, where header-biased mutations change its types.
    seeds["JPEG-raw-exif"] = jpeg_with_exif([
        ORIENTATION_6, (0x010F, 2, 4, b"moon"), (0x011A, 5, 1, struct.pack("<I", 64)),
        (0x0128, 3, 1, struct.pack("<HH", 2, 0))])
    return seeds


# ---------------------------------------------------------------- mutations

def derandomized(max_examples: int) -> settings:
    """Hypothesis settings for a fuzz run CI can repeat: the same ``max_examples`` files in
    every run (derandomized, no example database), no per-example deadline."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


_EXTREMES = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
             b"\x00\x01", b"\xff\xfe", b"\x00\x00\x01\x00")


@st.composite
def _mutate(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        size = len(out)
        if size == 0:
            break
        # Half of the edits land in the first 64 bytes, where formats keep their headers.
        header = draw(st.booleans())
        pos = draw(st.integers(0, min(size, 64) - 1 if header else size - 1))
        op = draw(st.sampled_from(("flip", "byte", "extreme", "truncate", "insert", "delete", "repeat")))
        if op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            out[pos] = draw(st.integers(0, 255))
        elif op == "extreme":
            value = draw(st.sampled_from(_EXTREMES))
            out[pos:pos + len(value)] = value
        elif op == "truncate":
            del out[max(pos, 1):]
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[pos:pos + draw(st.integers(1, 16))]
        else:  # repeat a span (duplicated chunks, segments, scans)
            span = bytes(out[pos:pos + draw(st.integers(1, 64))])
            out[pos:pos] = span * draw(st.integers(1, 8))
    return bytes(out)


def mutated_images() -> st.SearchStrategy[tuple[str, bytes]]:
    """(seed name, damaged bytes) over every seed of :func:`seed_files`."""
    seeds = seed_files()
    return st.sampled_from(sorted(seeds)).flatmap(
        lambda name: _mutate(seeds[name]).map(lambda data: (name, data)))


# ---------------------------------------------------------------- directed attacks


def _pascal(name: bytes, pad: int) -> bytes:
    raw = bytes([len(name)]) + name
    return raw + b"\x00" * (-len(raw) % pad)


def psd_with_layers(width: int, height: int, num_layers: int = 2) -> bytes:
    """A valid 8-bit RGB Photoshop file with ``num_layers`` full-size layers and a merged
    image (all raw, uncompressed), laid out as Adobe's file format specification says."""
    plane = width * height
    records = b""
    channel_data = b""
    for index in range(num_layers):
        records += struct.pack(">iiiiH", 0, 0, height, width, 3)
        for channel in range(3):
            records += struct.pack(">hI", channel, 2 + plane)  # id, length (compression + data)
            channel_data += struct.pack(">H", 0) + bytes([(40 * index + 90 * channel) % 256]) * plane
        extra = struct.pack(">II", 0, 0) + _pascal(f"layer {index}".encode(), 4)
        records += b"8BIMnorm" + bytes([255, 0, 0, 0]) + struct.pack(">I", len(extra)) + extra
    layer_info = struct.pack(">h", num_layers) + records + channel_data
    layer_info += b"\x00" * (len(layer_info) % 2)
    layer_section = struct.pack(">I", len(layer_info)) + layer_info + struct.pack(">I", 0)
    merged = struct.pack(">H", 0) + b"".join(bytes([90 * c % 256]) * plane for c in range(3))
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    return (header + struct.pack(">I", 0) + struct.pack(">I", 0)
            + struct.pack(">I", len(layer_section)) + layer_section + merged)


def ico_wrapping_png(png_width: int, png_height: int, claimed: int = 16) -> bytes:
    """An ICO whose directory claims ``claimed`` x ``claimed`` but whose one entry is a PNG
    of ``png_width`` x ``png_height`` (1-bit, so a huge one stays a few KiB)."""
    png = _encode(Image.new("1", (png_width, png_height), 0), "PNG")
    entry = struct.pack("<BBBBHHII", claimed % 256, claimed % 256, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def repeated_scan_jpeg(side: int, repeats: int) -> bytes:
    """A progressive JPEG of ``side`` x ``side`` whose last scan is repeated ``repeats``
    more times: libjpeg only warns, and every repeat costs a pass over all the blocks, so
    a few hundred KiB take many seconds to decode."""
    data = _encode(Image.new("RGB", (side, side), (120, 160, 200)), "JPEG", progressive=True, quality=90)
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeats + data[end:]


def jpeg_with_exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A small JPEG with a hand-written EXIF block: ``entries`` are raw IFD0 entries
    ``(tag, TIFF type, count, 4-byte value field)``, written as given, so a standard tag
    can carry a value of the wrong type (Pillow's own writer would not allow it)."""
    entries = sorted(entries)
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 64
    app1 = b"Exif\x00\x00" + tiff
    data = _encode(_picture(), "JPEG")
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


ORIENTATION_6 = (0x0112, 3, 1, struct.pack("<HH", 6, 0))  # SHORT 6: rotate 90 on display


def avif_without_its_image() -> bytes:
    """A small AVIF whose primary-item box (``pitm``) points at an item that does not exist:
    libavif refuses it with a ``RuntimeError`` (main answered INTERNAL)."""
    data = seed_files()["AVIF"]
    item = data.index(b"pitm") + 8  # after the box type and its version/flags
    return data[:item] + b"\x00\x07" + data[item + 2:]


def dds_with_unknown_pixel_format() -> bytes:
    """A DDS file whose pixel-format flags are zero: Pillow raises ``NotImplementedError``
    (main answered INTERNAL; DDS is not an accepted format now)."""
    data = bytearray(seed_files()["DDS"])
    data[80:84] = b"\x00\x00\x00\x00"  # DDS_PIXELFORMAT.dwFlags
    return bytes(data)
