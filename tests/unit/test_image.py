"""Image decoding (formats, orientation, errors) and moondream2 crop geometry."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from engine_support import GOLDEN_DIR as GOLDEN
from PIL import Image

from moonpipe.errors import InvalidRequest
from moonpipe.model.image import (
    CROP_SIZE,
    decode_image,
    image_tiling,
    normalize_crops,
    overlap_crops,
    select_tiling,
)

MAX = 10_000_000


def _rgb(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "PPM"])
def test_lossless_formats_round_trip(fmt: str) -> None:
    arr = _rgb()
    out = decode_image(_encode(Image.fromarray(arr), fmt), max_pixels=MAX)
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_decode_close(fmt: str) -> None:
    arr = np.tile(np.linspace(0, 255, 60, dtype=np.uint8)[None, :, None], (40, 1, 3))
    out = decode_image(_encode(Image.fromarray(arr), fmt, quality=95), max_pixels=MAX)
    assert out.shape == (40, 60, 3)
    assert np.abs(out.astype(int) - arr.astype(int)).mean() < 4


def test_gif_first_frame() -> None:
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (10, 200)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(data, max_pixels=MAX)
    assert out.shape == (20, 30, 3)
    assert abs(int(out.mean()) - 10) <= 2


def test_grayscale_rgba_and_palette() -> None:
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    out = decode_image(_encode(Image.fromarray(gray, "L"), "PNG"), max_pixels=MAX)
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.dstack([_rgb(10, 20), np.full((10, 20), 128, np.uint8)])
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), max_pixels=MAX)
    np.testing.assert_array_equal(out, rgba[:, :, :3])
    pal = Image.fromarray(_rgb(10, 20)).convert("P")
    assert decode_image(_encode(pal, "PNG"), max_pixels=MAX).shape == (10, 20, 3)


@pytest.mark.parametrize(("mode", "fmt"), [("CMYK", "JPEG"), ("1", "PNG"), ("LA", "PNG"), ("L", "TIFF")])
def test_other_modes_decode_to_rgb(mode: str, fmt: str) -> None:
    img = Image.fromarray(_rgb(12, 16)).convert(mode)
    out = decode_image(_encode(img, fmt), max_pixels=MAX)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8


def test_16bit_grayscale_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    out = decode_image(_encode(Image.fromarray(arr), "PNG"), max_pixels=MAX)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_orientation_is_applied() -> None:
    img = Image.fromarray(_rgb(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode_image(_encode(img, "JPEG", exif=exif), max_pixels=MAX)
    assert out.shape == (40, 20, 3)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"definitely not an image", "cannot identify"),
    ],
)
def test_invalid_bytes(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=rf"^IMAGE: .*{fragment}"):
        decode_image(data, max_pixels=MAX)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt: str) -> None:
    data = _encode(Image.fromarray(_rgb(64, 64)), fmt)
    with pytest.raises(InvalidRequest, match=r"^IMAGE: "):
        decode_image(data[: len(data) // 2], max_pixels=MAX)


def test_too_many_pixels_rejected_from_header() -> None:
    data = _encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(InvalidRequest, match=r"^IMAGE: 300x200 .* exceeds"):
        decode_image(data, max_pixels=300 * 200 - 1)
    assert decode_image(data, max_pixels=300 * 200).shape == (200, 300, 3)


def test_decompression_bomb_is_invalid_request() -> None:
    # A PNG header claiming 100k x 100k pixels (far above Pillow's bomb limit).
    data = _encode(Image.new("L", (1, 1)), "PNG")
    ihdr = data.index(b"IHDR")
    import struct
    import zlib

    body = struct.pack(">II", 100_000, 100_000) + data[ihdr + 12 : ihdr + 17]
    chunk = b"IHDR" + body
    crc = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    bomb = data[: ihdr - 4] + struct.pack(">I", 13) + chunk + crc + data[ihdr + 21 :]
    with pytest.raises(InvalidRequest, match=r"^IMAGE: "):
        decode_image(bomb, max_pixels=10**12)


# ---------------------------------------------------------------- tiling and crops


def test_select_tiling_rules() -> None:
    assert select_tiling(266, 5000, 266, 12) == (1, 1)  # a side within one window
    assert select_tiling(3000, 3000, 266, 12) == (3, 3)  # too many minimal tiles: scaled down
    assert select_tiling(600, 1200, 266, 12) == (2, 4)  # 3x5 minimal tiles scaled by sqrt(12/15)
    assert select_tiling(400, 800, 266, 12) == (2, 4)  # sqrt(12 h/w) x sqrt(12 w/h)
    assert select_tiling(520, 280, 266, 5) == (2, 2)  # 3x2 > 5: the larger side shrinks
    assert select_tiling(300, 2700, 266, 12) == (1, 8)
    for h, w in [(300, 300), (600, 400), (1000, 300), (5000, 5000)]:
        th, tw = select_tiling(h, w, 266, 6)
        assert 1 <= th and 1 <= tw and th * tw <= 6


def test_tiling_table_matches_golden() -> None:
    rows = json.loads((GOLDEN / "golden.json").read_text())["tiling_table"]["rows"]
    for row in rows:
        for mc in (6, 12):
            assert list(image_tiling(row["height"], row["width"], mc)) == row[f"tiling_max_crops_{mc}"], row


@pytest.mark.parametrize(
    ("h", "w"),
    [(1, 1), (1, 2000), (2000, 1), (377, 379), (420, 760), (500, 375), (913, 2311), (4000, 3000)],
)
def test_crop_geometry(h: int, w: int) -> None:
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : max(1, w // 2)] = 255
    crops, (th, tw) = overlap_crops(image, max_crops=12)
    assert crops.dtype == np.uint8 and crops.shape == (1 + th * tw, CROP_SIZE, CROP_SIZE, 3)
    assert (th, tw) == image_tiling(h, w, 12) and th * tw <= 12
    # Global crop: left half white, right half black, whatever the aspect ratio.
    if w >= 4:
        assert crops[0, :, :100].mean() > 200 and crops[0, :, -100:].mean() < 50


def test_local_crops_overlap_by_the_margin() -> None:
    image = np.random.default_rng(1).integers(0, 256, (800, 1200, 3), dtype=np.uint8)
    crops, (_, tw) = overlap_crops(image, max_crops=12)
    assert tw >= 2
    # Tiles (0, 0) and (0, 1) share 112 columns of the resized image.
    np.testing.assert_array_equal(crops[1][:, 266:], crops[2][:, :112])


def test_golden_crops_bit_exact() -> None:
    from safetensors.torch import load_file

    image = np.asarray(Image.open(GOLDEN / "image.png").convert("RGB"))
    crops, tiling = overlap_crops(image, max_crops=6)
    want = load_file(str(GOLDEN / "golden.safetensors"))["crops_u8"].numpy()
    assert tiling == (2, 3)
    np.testing.assert_array_equal(crops, want)


def test_normalize_crops() -> None:
    crops = np.zeros((2, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    crops[1] = 255
    crops[0, 0, 0] = (0, 51, 255)
    x = normalize_crops(crops, torch.float32, "cpu")
    assert x.shape == (2, 3, CROP_SIZE, CROP_SIZE) and x.dtype == torch.float32
    assert x[1].eq(1.0).all() and x[0, :, 1:].eq(-1.0).all()
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, -0.6, 1.0])
    assert normalize_crops(crops, torch.bfloat16, "cpu").dtype == torch.bfloat16


def test_too_many_pixels_says_how_to_resize_and_which_parameter_raises_the_limit() -> None:
    data = _encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(InvalidRequest) as info:
        decode_image(data, max_pixels=59_999)
    message = str(info.value)
    assert "thumbnail((244, 244))" in message  # a size that fits: isqrt(59999) on each side
    assert "max_image_pixels" in message and "--param max_image_pixels=" in message
