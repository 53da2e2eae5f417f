"""A small pool of threads that decode and crop request images off the caller's thread.

``Engine.submit`` runs on the thread that admits requests (Triton's ``execute``). Image
decoding used to run there too, so one slow image (a progressive JPEG whose last scan
repeats a thousand times decoded for ~23 s) held up every request behind it. Now submit
only queues the bytes here and returns; a worker decodes (``decode_image``, with the
limits of :class:`ImageLimits`), cuts the crops, and calls the job's ``done`` callback:
``done(DecodedImage, None)`` or ``done(None, error)``, exactly once per job.

- Errors on the caller's bytes are ``InvalidRequest("IMAGE: ...")``; a failure in our
  own code after decoding is ``RequestFailed`` (INTERNAL); jobs still queued when the
  pool closes get ``EngineStopped``.
- Bounded: ``num_workers`` threads (images decode in C with the GIL released, so they
  overlap with the scheduler); each image's work is bounded by its limits (pixels,
  JPEG scans, time). The jobs waiting are bounded by the engine's in-flight limit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moonpipe.errors import EngineError, EngineStopped, InvalidRequest, RequestFailed
from moonpipe.model.image import decode_image, overlap_crops
from moonpipe.model.image_limits import Deadline

__all__ = ["DecodeDone", "DecodedImage", "ImageDecodePool", "ImageLimits"]

log = logging.getLogger("moonpipe.decode_pool")


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What decoding one image may cost (EngineConfig's ``max_image_*`` fields)."""

    max_pixels: int
    max_scans: int
    max_decode_s: float
    max_crops: int

    def __post_init__(self) -> None:
        if min(self.max_pixels, self.max_scans, self.max_crops) <= 0 or self.max_decode_s <= 0:
            raise ValueError(f"ImageLimits: every limit must be positive, got {self}")


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image ready for prefill."""

    crops: np.ndarray  # (1 + th*tw, 378, 378, 3) uint8
    tiling: tuple[int, int]  # (th, tw)


DecodeDone = Callable[[DecodedImage | None, EngineError | None], None]


def decode_and_crop(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Decode the caller's bytes within ``limits`` and cut moondream's crops. Raises
    InvalidRequest for the bytes, anything else for our own faults."""
    deadline = Deadline.after(limits.max_decode_s)
    image = decode_image(data, max_pixels=limits.max_pixels, max_scans=limits.max_scans, deadline=deadline)
    deadline.check()
    crops, tiling = overlap_crops(image, limits.max_crops)
    return DecodedImage(crops, tiling)


@dataclass(frozen=True, slots=True)
class _Job:
    data: bytes
    done: DecodeDone


class ImageDecodePool:
    """``submit(bytes, done)`` -> a worker decodes and calls ``done`` (module docstring)."""

    def __init__(self, limits: ImageLimits, num_workers: int,
                 on_worker_start: Callable[[], None] | None = None) -> None:
        if num_workers <= 0:
            raise ValueError(f"ImageDecodePool: num_workers must be positive, got {num_workers}")
        self.limits = limits
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0  # submitted and not yet done (queued or decoding)
        self._on_worker_start = on_worker_start
        self._workers: Sequence[threading.Thread] = [
            threading.Thread(target=self._run, name=f"moonpipe-image-{i}", daemon=True)
            for i in range(num_workers)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def num_pending(self) -> int:
        """Images queued or being decoded (a racy read, for metrics)."""
        return self._pending

    def submit(self, data: bytes, done: DecodeDone) -> None:
        """Queue ``data``; ``done`` is called once, from a worker (or from :meth:`close`).
        Raises EngineStopped after :meth:`close`."""
        with self._lock:
            if self._closed:
                raise EngineStopped("UNAVAILABLE: the engine is not accepting requests")
            self._pending += 1
            self._jobs.put(_Job(data, done))

    def close(self, timeout: float) -> None:
        """Stop: jobs not started get EngineStopped at once, those being decoded finish
        (their ``done`` runs as usual); waits up to ``timeout`` s for the workers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(job, None, EngineStopped("UNAVAILABLE: the server is shutting down"))
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join(timeout)
            if worker.is_alive():  # a decode step cannot be interrupted; it ends on its own
                log.warning("image decode pool: %s still decoding at close", worker.name)

    # ------------------------------------------------------------------ workers

    def _run(self) -> None:
        if self._on_worker_start is not None:
            self._on_worker_start()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            decoded: DecodedImage | None = None
            error: EngineError | None = None
            try:
                decoded = decode_and_crop(job.data, self.limits)
            except InvalidRequest as exc:
                error = exc
            except Exception as exc:  # ours, not the caller's: INTERNAL, and the pool lives on
                log.exception("decoding an image failed")
                error = RequestFailed(f"decoding the image failed: {exc!r}")
            self._finish(job, decoded, error)

    def _finish(self, job: _Job, decoded: DecodedImage | None, error: EngineError | None) -> None:
        with self._lock:
            self._pending -= 1
        try:
            job.done(decoded, error)
        except Exception:  # a callback must not kill the worker; it is a bug: say so
            log.exception("image decode pool: a done callback raised")
