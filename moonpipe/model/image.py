"""Image decoding and moondream2's overlapping-crop preprocessing (spec section 3).

``decode_image`` turns untrusted bytes into an RGB uint8 array or raises ``InvalidRequest``
("IMAGE: ..."): the limits it enforces are in ``image_limits.py``, the rule that every
failure on the caller's bytes is the caller's error in ``image_errors.py``.
``overlap_crops`` reproduces the reference's Pillow path bit-exactly: one global 378x378
crop plus ``th x tw`` overlapping local crops cut from a LANCZOS resize.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFile

from moonpipe.errors import InvalidRequest, raise_limit_hint
from moonpipe.model.image_errors import caller_image_errors
from moonpipe.model.image_limits import (
    DECODE_BLOCK_BYTES,
    Deadline,
    DeadlineStream,
    check_container,
    open_accepted,
)

__all__ = [
    "CROP_SIZE",
    "MARGIN_PX",
    "WINDOW_PX",
    "decode_image",
    "normalize_crops",
    "overlap_crops",
    "select_tiling",
]

CROP_SIZE = 378
PATCH_SIZE = 14
OVERLAP_MARGIN = 4  # patches
MARGIN_PX = OVERLAP_MARGIN * PATCH_SIZE  # 56
WINDOW_PX = (CROP_SIZE // PATCH_SIZE - 2 * OVERLAP_MARGIN) * PATCH_SIZE  # 266


_TRANSPOSE_FOR_ORIENTATION = {  # EXIF Orientation value -> the transpose that undoes it
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(img: Image.Image) -> Image.Image:
    """``img`` as displayed: its EXIF (or XMP) Orientation applied. Only the orientation
    is read: other metadata, however malformed, is never rewritten (unlike
    ``ImageOps.exif_transpose``); an orientation that is not 1-8 is ignored."""
    orientation = img.getexif().get(0x0112)
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8. High-bit-depth grayscale is scaled, not clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.clip(np.asarray(img), 0.0, 255.0).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.ascontiguousarray(np.asarray(img.convert("RGB")), dtype=np.uint8)


def decode_image(data: bytes, *, max_pixels: int, max_scans: int | None = None,
                 deadline: Deadline | None = None) -> np.ndarray:
    """Decode the caller's image bytes -> (H, W, 3) uint8, upright (EXIF orientation).

    Accepted formats: ``image_limits.ACCEPTED_FORMATS`` (animations: the first frame;
    Photoshop files: the merged image). Before anything is decoded: the pixel count
    against ``max_pixels`` (from the headers, those of an ICO's embedded images too) and
    a JPEG's scans against ``max_scans`` (None: not checked); ``deadline`` bounds the
    decoding time. Raises InvalidRequest ("IMAGE: ...") for every problem with the bytes
    (image_errors.py); only MemoryError escapes as a server fault.
    """
    if not data:
        raise InvalidRequest("IMAGE: empty image data")
    with caller_image_errors():
        check_container(data, max_pixels=max_pixels, max_scans=max_scans)
        stream = DeadlineStream(data, deadline)
        with open_accepted(stream) as img:
            w, h = img.size
            if w <= 0 or h <= 0:
                raise InvalidRequest(f"IMAGE: zero-size image ({w}x{h})")
            if w * h > max_pixels:
                side = math.isqrt(max_pixels)
                raise InvalidRequest(
                    f"IMAGE: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}; resize it before "
                    f"sending (Pillow: image.thumbnail(({side}, {side})); the model sees 378x378 crops, so "
                    f"a few thousand pixels a side lose nothing), {raise_limit_hint('max_image_pixels')}")
            # No seek(0): a file opens at its first frame (a Photoshop file at its merged
            # image, which is not frame 0: seeking there fails).
            if isinstance(img, ImageFile.ImageFile):
                img.decodermaxblock = DECODE_BLOCK_BYTES  # the deadline is checked per block
            img.load()
            if deadline is not None:
                deadline.check()
            arr = _to_rgb_array(_upright(img))
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidRequest(f"IMAGE: zero-size image ({arr.shape})")
    return arr


def select_tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, cols) of local crops for an image whose margin-reduced size is height x width."""
    if height <= window or width <= window:
        return (1, 1)
    min_h = math.ceil(height / window)
    min_w = math.ceil(width / window)
    if min_h * min_w > max_crops:
        ratio = math.sqrt(max_crops / (min_h * min_w))
        return (max(1, math.floor(min_h * ratio)), max(1, math.floor(min_w * ratio)))
    h_tiles = max(math.floor(math.sqrt(max_crops * height / width)), min_h)
    w_tiles = max(math.floor(math.sqrt(max_crops * width / height)), min_w)
    if h_tiles * w_tiles > max_crops:
        if w_tiles > h_tiles:
            w_tiles = math.floor(max_crops / h_tiles)
        else:
            h_tiles = math.floor(max_crops / w_tiles)
    return (max(1, h_tiles), max(1, w_tiles))


def image_tiling(height: int, width: int, max_crops: int) -> tuple[int, int]:
    """Tiling the reference picks for an H x W image (margins removed first)."""
    return select_tiling(height - 2 * MARGIN_PX, width - 2 * MARGIN_PX, WINDOW_PX, max_crops)


def overlap_crops(image: np.ndarray, max_crops: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 -> (crops (1 + th*tw, 378, 378, 3) uint8, (th, tw)).

    Crop 0 is the whole image resized to 378x378; crop ``1 + i*tw + j`` is the window at
    (266 i, 266 j) of the image resized to (266 th + 112) x (266 tw + 112), Pillow LANCZOS.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"overlap_crops: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    th, tw = image_tiling(h, w, max_crops)
    target_h, target_w = th * WINDOW_PX + 2 * MARGIN_PX, tw * WINDOW_PX + 2 * MARGIN_PX
    pil = Image.fromarray(image)
    resized = np.asarray(pil.resize((target_w, target_h), resample=Image.Resampling.LANCZOS))
    crops = np.zeros((1 + th * tw, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    crops[0] = np.asarray(pil.resize((CROP_SIZE, CROP_SIZE), resample=Image.Resampling.LANCZOS))
    for i in range(th):
        for j in range(tw):
            tile = resized[i * WINDOW_PX : i * WINDOW_PX + CROP_SIZE, j * WINDOW_PX : j * WINDOW_PX + CROP_SIZE]
            crops[1 + i * tw + j, : tile.shape[0], : tile.shape[1]] = tile
    return crops, (th, tw)


def normalize_crops(
    crops_u8: np.ndarray | torch.Tensor,
    dtype: torch.dtype,
    device: str | torch.device,
) -> torch.Tensor:
    """(n, 378, 378, 3) uint8 -> (n, 3, 378, 378) in [-1, 1]: ``(x/255 - 0.5)/0.5`` in float32."""
    crops = torch.as_tensor(crops_u8).to(device=device, non_blocking=True)
    x = crops.permute(0, 3, 1, 2).float()
    return ((x / 255.0 - 0.5) / 0.5).to(dtype).contiguous()
