"""Turn whatever a caller holds (path, bytes, PIL image, numpy array) into image file bytes.

The server decodes the image itself, so encoded files (JPEG, PNG, WebP, ...) are sent as
they are; in-memory pixels (PIL images, arrays) are encoded losslessly as PNG.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from moonpipe_client.errors import InvalidRequest

__all__ = ["ImageInput", "encode_image", "open_image"]

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray
"""Anything the client accepts as an image."""


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]  # (H, W, 1) -> (H, W)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidRequest(
            f"IMAGE: a numpy image must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}"
        )
    if array.size == 0:
        raise InvalidRequest(f"IMAGE: the numpy image is empty (shape {array.shape})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InvalidRequest("IMAGE: a float numpy image must hold values in [0, 1]")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InvalidRequest(f"IMAGE: numpy images must be uint8, bool or float in [0, 1], got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _pil_to_png(image: Image.Image) -> bytes:
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_image(image: ImageInput) -> bytes:
    """The encoded file bytes to send for ``image``.

    ``str``/``PathLike``: the file's bytes; ``bytes``-like: sent unchanged (the server
    validates them); PIL image or numpy array ``(H, W[, C])``: encoded as PNG.
    Raises ``InvalidRequest`` for a missing file or an unsupported value.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            raise InvalidRequest(f"IMAGE: no such file: {path}") from None
        except OSError as exc:
            raise InvalidRequest(f"IMAGE: cannot read {path}: {exc.strerror or exc}") from exc
    if isinstance(image, np.ndarray):
        return _pil_to_png(_array_to_pil(image))
    if isinstance(image, Image.Image):
        return _pil_to_png(image)
    raise InvalidRequest(
        f"IMAGE: expected a path, bytes, a PIL image or a numpy array, got {type(image).__name__}"
    )


def open_image(image: ImageInput) -> Image.Image:
    """``image`` as a PIL image in RGB (used for drawing results over it)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _array_to_pil(image).convert("RGB")
    data = encode_image(image)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidRequest(f"IMAGE: cannot decode the image: {exc}") from exc
