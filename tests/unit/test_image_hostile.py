"""Hostile images at the decoder: damaged files of every format are the caller's error
(INVALID_ARG: IMAGE), never ours (INTERNAL); the work one image may cost is bounded.

The fuzz is deterministic (derandomized Hypothesis, a fixed number of examples), so CI
sees the same files every run.
"""

from __future__ import annotations

import io
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostile_images import (
    ORIENTATION_6,
    derandomized,
    ico_wrapping_png,
    jpeg_with_exif,
    mutated_images,
    psd_with_layers,
    repeated_scan_jpeg,
    seed_files,
)
from hypothesis import given
from PIL import Image, ImageFile

from moonpipe.errors import InvalidRequest
from moonpipe.model.image import decode_image
from moonpipe.model.image_errors import caller_image_errors
from moonpipe.model.image_limits import (
    ACCEPTED_FORMATS,
    Deadline,
    DeadlineStream,
    count_jpeg_scans,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "model_repository" / "moondream" / "1"))
from moondream_io import error_message  # the adapter's classification

# Damaged images make Pillow warn (corrupt EXIF, truncated reads...): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning:PIL")

MAX_PIXELS = 4_000_000
FUZZ_EXAMPLES = 2000


def classify(decode: Callable[[bytes], object], data: bytes) -> tuple[str, str]:
    """("ok" | "INVALID_ARG" | "INTERNAL", detail) of one decode, as a client would see it."""
    try:
        decode(data)
    except Exception as exc:
        message = error_message(exc)
        kind = "INVALID_ARG" if message.startswith("INVALID_ARG: IMAGE: ") else "INTERNAL"
        return kind, f"{type(exc).__name__}: {message[:120]}"
    return "ok", ""


def fuzz_outcomes(decode: Callable[[bytes], object]) -> tuple[Counter[str], list[str]]:
    """Run the fuzz corpus through ``decode``: outcome counts and the INTERNAL cases."""
    counts: Counter[str] = Counter()
    internal: list[str] = []

    @derandomized(FUZZ_EXAMPLES)
    @given(case=mutated_images())
    def run(case: tuple[str, bytes]) -> None:
        name, data = case
        kind, detail = classify(decode, data)
        counts[kind] += 1
        if kind == "INTERNAL":
            internal.append(f"{name} ({len(data)} bytes): {detail}")

    run()
    return counts, internal


def _decode(data: bytes) -> np.ndarray:
    return decode_image(data, max_pixels=MAX_PIXELS, max_scans=32, deadline=Deadline.after(10.0))


def test_fuzz_no_damaged_image_is_an_internal_error() -> None:
    counts, internal = fuzz_outcomes(_decode)
    print(f"fuzz outcomes over {sum(counts.values())} damaged files: {dict(counts)}")
    assert not internal, f"{len(internal)} damaged images answered INTERNAL:\n" + "\n".join(internal[:20])
    assert counts["INVALID_ARG"] > 0 and counts["ok"] > 0  # the corpus reaches both outcomes


def test_every_seed_of_an_accepted_format_decodes() -> None:
    accepted = {"AVIF", "BMP", "GIF", "GIF-animated", "ICO", "ICO-png", "JPEG", "JPEG-CMYK",
                "JPEG-progressive-exif", "MPO", "PNG", "PNG-16bit", "PNG-animated", "PNG-exif",
                "PNG-palette-transparency", "PPM", "PSD-layers", "QOI", "TIFF", "TIFF-exif-lzw",
                "TIFF-multipage", "WEBP", "WEBP-exif"}
    for name, data in seed_files().items():
        if name in accepted:
            assert _decode(data).ndim == 3, name


@pytest.mark.parametrize("name", ["BLP", "DDS", "ICNS", "JPEG2000", "MSP", "PCX", "SGI", "XBM"])
def test_formats_outside_the_accepted_list_are_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidRequest, match=rf"^IMAGE: {name} images are not accepted; send JPEG, PNG"):
        _decode(seed_files()[name])


@pytest.mark.parametrize("name", ["IM", "SPIDER"])
def test_formats_without_a_signature_are_not_identified(name: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^IMAGE: cannot identify image format \(JPEG, PNG"):
        _decode(seed_files()[name])


def test_accepted_formats_are_what_the_messages_promise() -> None:
    from moonpipe.model.image_errors import ACCEPTED_DESCRIPTION

    names = {"PPM": "PNM", "WEBP": "WebP"}
    for fmt in ACCEPTED_FORMATS:
        assert names.get(fmt, fmt) in ACCEPTED_DESCRIPTION, fmt


def test_a_multi_layer_photoshop_file_decodes_to_its_merged_image() -> None:
    data = psd_with_layers(30, 20, num_layers=3)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = _decode(data)
    assert out.shape == (20, 30, 3)
    assert out[0, 0].tolist() == [0, 90, 180]  # the merged image's channels, not a layer's


def test_an_ico_wrapping_a_huge_png_is_refused_before_anything_is_decoded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        loads.append(type(self).__name__)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    data = ico_wrapping_png(3000, 2000)  # the directory says 16x16
    with pytest.raises(InvalidRequest, match=r"^IMAGE: the ICO file holds a 3000x2000 image: 6000000 pixels "
                                             rf"exceeds the limit of {MAX_PIXELS}"):
        _decode(data)
    assert loads == []
    assert _decode(ico_wrapping_png(64, 32)).shape == (32, 64, 3)  # a small one is fine


def test_jpeg_scans_are_counted_from_the_markers() -> None:
    progressive = seed_files()["JPEG-progressive-exif"]  # EXIF first: its bytes are skipped
    assert count_jpeg_scans(progressive) == 10
    assert count_jpeg_scans(seed_files()["JPEG"]) == 1
    assert count_jpeg_scans(repeated_scan_jpeg(64, 50)) == 60


def test_a_jpeg_with_repeated_scans_is_refused_before_decoding() -> None:
    data = repeated_scan_jpeg(2000, 200)  # decodes for about a second if let through
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match=r"^IMAGE: the JPEG has 210 scans, over the limit of 32"):
        _decode(data)
    assert time.monotonic() - started < 0.5  # hang guard: refused from the markers alone
    assert _decode(repeated_scan_jpeg(64, 5)).shape == (64, 64, 3)  # 15 scans: within the limit


def test_the_deadline_stops_a_decoder_that_reads_its_input() -> None:
    expired = Deadline(seconds=2.0, until=time.monotonic() - 1.0)
    stream = DeadlineStream(b"abc", expired)
    with pytest.raises(InvalidRequest, match=r"^IMAGE: decoding took longer than 2 s, the limit per image"):
        stream.read(1)
    with pytest.raises(InvalidRequest, match="took longer than 2 s"):
        decode_image(seed_files()["PNG"], max_pixels=MAX_PIXELS, deadline=expired)


@pytest.mark.parametrize("entry", [
    (0x011A, 2, 1, b"6\x00\x00\x00"),  # XResolution as ASCII (a RATIONAL tag)
    (0x011A, 1, 1, b"\x06\x00\x00\x00"),  # ... as BYTE
    (0x0128, 1, 1, b"\x06\x00\x00\x00"),  # ResolutionUnit as BYTE (a SHORT tag)
    (0x010F, 5, 1, b"\x06\x00\x00\x00"),  # Make as RATIONAL (an ASCII tag)
], ids=["xresolution-ascii", "xresolution-byte", "resolution-unit-byte", "make-rational"])
def test_exif_of_the_wrong_type_does_not_stop_the_image(entry: tuple[int, int, int, bytes]) -> None:
    out = _decode(jpeg_with_exif([ORIENTATION_6, entry]))
    assert out.shape == (24, 16, 3)  # decoded and still turned upright (24x16 stored)


@pytest.mark.parametrize("entry", [
    (0x0112, 2, 1, b"6\x00\x00\x00"),  # Orientation as ASCII
    (0x0112, 5, 1, b"\x06\x00\x00\x00"),  # ... as RATIONAL
    (0x0112, 3, 1, struct.pack("<HH", 99, 0)),  # ... out of range
])
def test_an_unusable_orientation_is_ignored(entry: tuple[int, int, int, bytes]) -> None:
    assert _decode(jpeg_with_exif([entry])).shape == (16, 24, 3)


@pytest.mark.parametrize("exc", [TypeError("x"), KeyError("k"), IndexError("i"), ZeroDivisionError("z"),
                                 struct.error("s"), AttributeError("a"), RecursionError("r"),
                                 NotImplementedError("n"), OSError("o"), EOFError("e")])
def test_any_exception_on_the_callers_bytes_is_invalid_arg(exc: Exception) -> None:
    with pytest.raises(InvalidRequest) as info:
        with caller_image_errors():
            raise exc
    assert error_message(info.value).startswith("INVALID_ARG: IMAGE: ")


def test_running_out_of_memory_stays_a_server_fault() -> None:
    with pytest.raises(MemoryError):
        with caller_image_errors():
            raise MemoryError
