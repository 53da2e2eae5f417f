"""Run one skill over a folder of images with bounded concurrency, one JSON line per image.

``concurrency`` workers share one :class:`~moonpipe_client.AsyncClient`; each reads its
next image only when it is free, so memory stays bounded for any folder size. A failed
image is recorded on its own line (``{"image": ..., "error": {"type", "message"}}``) and
does not stop the batch. Lines are written as images finish (not in folder order).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from moonpipe_client.aio import AsyncClient
from moonpipe_client.errors import MoonpipeError
from moonpipe_client.results import Result

__all__ = ["IMAGE_SUFFIXES", "BatchSummary", "Progress", "find_images", "image_name", "run_batch"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_name(path: Path, root: Path) -> str:
    """How a batch line names ``path``: relative to the folder ``root``, with ``/``."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """How a batch went."""

    num_ok: int
    num_failed: int
    seconds: float


class Progress:
    """A one-line progress bar on ``stream`` (redrawn only when it is a terminal)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = total
        self.stream = stream
        self.width = width
        self.num_done = 0
        self.num_failed = 0
        self._live = stream.isatty()

    def advance(self, failed: bool) -> None:
        self.num_done += 1
        self.num_failed += int(failed)
        if self._live:
            filled = self.width * self.num_done // max(1, self.total)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {self.num_done}/{self.total} images, {self.num_failed} failed")
            self.stream.flush()

    def finish(self) -> None:
        if self._live:
            self.stream.write("\n")
            self.stream.flush()


def _line(image: str, result: Result | None, error: Exception | None) -> str:
    record: dict[str, Any] = {"image": image}
    if result is not None:
        record.update(result.to_record())
    else:
        assert error is not None  # exactly one of result / error
        record["error"] = {"type": type(error).__name__, "message": str(error)}
    return json.dumps(record, ensure_ascii=False)


async def _run_one(client: AsyncClient, skill: str, path: Path, text: str, options: dict[str, Any]) -> Result:
    if skill == "caption":
        return await client.caption(path, **options)
    if skill == "query":
        return await client.query(path, text, **options)
    if skill == "point":
        return await client.point(path, text, **options)
    if skill == "detect":
        return await client.detect(path, text, **options)
    return await client.segment(path, text, **options)


async def run_batch(client: AsyncClient, skill: str, images: Sequence[Path], root: Path, text: str,
                    options: dict[str, Any], out: TextIO, concurrency: int,
                    progress: Progress | None = None) -> BatchSummary:
    """Run ``skill`` on every image, writing one JSON line per image to ``out``.

    ``options`` are keyword arguments of the skill method (``max_objects``, ...).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    started = time.perf_counter()
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for path in images:
        queue.put_nowait(path)
    counts = [0, 0]  # ok, failed

    async def worker() -> None:
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result: Result | None = None
            error: Exception | None = None
            try:
                result = await _run_one(client, skill, path, text, options)
            except MoonpipeError as exc:
                error = exc
            out.write(_line(image_name(path, root), result, error) + "\n")
            out.flush()
            counts[error is not None] += 1
            if progress is not None:
                progress.advance(failed=error is not None)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(images))))))
    if progress is not None:
        progress.finish()
    return BatchSummary(num_ok=counts[0], num_failed=counts[1], seconds=time.perf_counter() - started)
