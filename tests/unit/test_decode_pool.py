"""The image decode pool: one final callback per job, the caller's errors vs ours, closing."""

from __future__ import annotations

import threading

import pytest
from engine_support import png_bytes
from hostile_images import repeated_scan_jpeg

import moonpipe.model.decode_pool as decode_pool
from moonpipe.errors import EngineError, EngineStopped, InvalidRequest, RequestFailed
from moonpipe.model.decode_pool import DecodedImage, ImageDecodePool, ImageLimits

LIMITS = ImageLimits(max_pixels=4_000_000, max_scans=32, max_decode_s=10.0, max_crops=12)


class Outcomes:
    """Collects done callbacks by job name."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[DecodedImage | None, EngineError | None]]] = {}
        self.changed = threading.Condition()

    def done(self, name: str) -> decode_pool.DecodeDone:
        def callback(image: DecodedImage | None, error: EngineError | None) -> None:
            with self.changed:
                self.calls.setdefault(name, []).append((image, error))
                self.changed.notify_all()

        return callback

    def wait(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: sum(map(len, self.calls.values())) >= count, 60), self.calls


def test_each_job_gets_one_callback_with_crops_or_the_callers_error() -> None:
    pool = ImageDecodePool(LIMITS, num_workers=2)
    out = Outcomes()
    pool.submit(png_bytes(1, (500, 400)), out.done("good"))
    pool.submit(b"not an image at all", out.done("junk"))
    pool.submit(repeated_scan_jpeg(64, 40), out.done("scans"))
    out.wait(3)
    pool.close(timeout=10)
    assert {name: len(calls) for name, calls in out.calls.items()} == {"good": 1, "junk": 1, "scans": 1}
    image, error = out.calls["good"][0]
    assert error is None and image is not None
    th, tw = image.tiling
    assert image.crops.shape == (1 + th * tw, 378, 378, 3) and th * tw > 1
    for name in ("junk", "scans"):
        image, error = out.calls[name][0]
        assert image is None and isinstance(error, InvalidRequest) and str(error).startswith("IMAGE: ")
    assert pool.num_pending == 0


def test_a_fault_of_ours_after_decoding_is_internal_and_the_pool_lives_on(monkeypatch: pytest.MonkeyPatch) -> None:
    real = decode_pool.overlap_crops
    calls = []

    def broken_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug in the crop code")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decode_pool, "overlap_crops", broken_once)
    pool = ImageDecodePool(LIMITS, num_workers=1)
    out = Outcomes()
    pool.submit(png_bytes(2), out.done("first"))
    pool.submit(png_bytes(3), out.done("second"))
    out.wait(2)
    pool.close(timeout=10)
    _, error = out.calls["first"][0]
    assert isinstance(error, RequestFailed) and error.code == "INTERNAL" and "crop code" in str(error)
    assert out.calls["second"][0][1] is None


def test_close_ends_queued_jobs_at_once_and_refuses_new_ones() -> None:
    release = threading.Event()
    pool = ImageDecodePool(LIMITS, num_workers=1)
    out = Outcomes()
    blocker = out.done("blocker")

    def held(image: DecodedImage | None, error: EngineError | None) -> None:
        release.wait(30)
        blocker(image, error)

    pool.submit(png_bytes(4), held)
    for i in range(3):
        pool.submit(png_bytes(10 + i), out.done(f"queued-{i}"))
    closer = threading.Thread(target=pool.close, args=(30,))
    closer.start()
    out.wait(3)  # the queued jobs end while the first one is still being handled
    assert "blocker" not in out.calls
    release.set()
    closer.join(30)
    out.wait(4)
    for i in range(3):
        (image, error), = out.calls[f"queued-{i}"]
        assert image is None and isinstance(error, EngineStopped)
    assert out.calls["blocker"][0][1] is None  # the one being decoded finished normally
    with pytest.raises(EngineStopped):
        pool.submit(png_bytes(5), out.done("late"))


def test_a_raising_callback_does_not_kill_its_worker() -> None:
    pool = ImageDecodePool(LIMITS, num_workers=1)
    out = Outcomes()

    def boom(image: DecodedImage | None, error: EngineError | None) -> None:
        raise RuntimeError("callback bug")

    pool.submit(png_bytes(6), boom)
    pool.submit(png_bytes(7), out.done("after"))
    out.wait(1)
    pool.close(timeout=10)
    assert out.calls["after"][0][1] is None


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_pixels=0, max_scans=1, max_decode_s=1.0, max_crops=1)
    with pytest.raises(ValueError, match="num_workers"):
        ImageDecodePool(LIMITS, num_workers=0)
