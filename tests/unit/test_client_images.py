"""Unit tests of image coercion: paths, bytes, PIL images and numpy arrays become file bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from moonpipe_client import InvalidRequest, encode_image
from moonpipe_client.images import open_image
from PIL import Image


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def test_bytes_and_paths_are_sent_unchanged(tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (9, 7), (200, 10, 10)).save(jpeg, format="JPEG")
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg.getvalue())
    assert encode_image(jpeg.getvalue()) == jpeg.getvalue()
    assert encode_image(bytearray(b"abc")) == b"abc"
    assert encode_image(memoryview(b"abc")) == b"abc"
    assert encode_image(path) == jpeg.getvalue()
    assert encode_image(str(path)) == jpeg.getvalue()


def test_pil_images_become_lossless_png() -> None:
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert np.array_equal(_decode(encode_image(Image.fromarray(pixels))), pixels)
    cmyk = Image.new("CMYK", (3, 2), (0, 0, 0, 0))
    assert _decode(encode_image(cmyk)).shape == (2, 3, 3)  # converted to RGB


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 1), (6, 4, 3), (6, 4, 4)])
def test_uint8_arrays_round_trip(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    decoded = _decode(encode_image(pixels))
    assert np.array_equal(decoded, pixels.reshape(decoded.shape))


def test_float_and_bool_arrays_are_scaled() -> None:
    assert _decode(encode_image(np.full((2, 2, 3), 1.0, dtype=np.float32))).max() == 255
    assert _decode(encode_image(np.array([[True, False]]))).tolist() == [[255, 0]]


@pytest.mark.parametrize(("value", "match"), [
    (np.zeros((2, 2, 2), dtype=np.uint8), "shape"),
    (np.zeros((0, 3, 3), dtype=np.uint8), "empty"),
    (np.full((2, 2), 2.0), r"\[0, 1\]"),
    (np.zeros((2, 2), dtype=np.int64), "uint8"),
    (12, "expected a path"),
])
def test_unsupported_values_are_invalid_requests(value: object, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        encode_image(value)  # type: ignore[arg-type]


def test_missing_file_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="no such file"):
        encode_image(tmp_path / "missing.png")


def test_open_image_decodes_every_input_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (5, 3), 77).save(path)
    for value in (path, path.read_bytes(), Image.open(path), np.full((3, 5), 77, dtype=np.uint8)):
        image = open_image(value)
        assert image.mode == "RGB" and image.size == (5, 3)
        assert image.getpixel((0, 0)) == (77, 77, 77)
    with pytest.raises(InvalidRequest, match="cannot decode"):
        open_image(b"not an image")
