"""The engine decodes images off the submitting thread: a slow image holds up nobody,
a bad one ends its request through the sink (exactly one final), never as INTERNAL."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_support import CollectSink, png_bytes
from hostile_images import derandomized, mutated_images
from hypothesis import given

import moonpipe.model.decode_pool as decode_pool
from moonpipe.config import EngineConfig
from moonpipe.engine import Engine
from moonpipe.errors import EngineStopped, InvalidRequest
from moonpipe.model.checkpoint import ensure_checkpoint
from moonpipe.request import Request

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "model_repository" / "moondream" / "1"))
from moondream_io import error_message  # the adapter's classification

# Damaged images make Pillow warn (corrupt EXIF, truncated reads...): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning:PIL")

SLOW = png_bytes(99)  # the image the blocking decoder below holds back


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny")


@pytest.fixture()
def release(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Decoding ``SLOW`` blocks until the returned event is set (set at teardown)."""
    gate = threading.Event()
    real = decode_pool.decode_and_crop

    def gated(data: bytes, limits: decode_pool.ImageLimits) -> decode_pool.DecodedImage:
        if data == SLOW:
            assert gate.wait(60), "the test never released the slow image"
        return real(data, limits)

    monkeypatch.setattr(decode_pool, "decode_and_crop", gated)
    yield gate
    gate.set()


def test_a_slow_image_holds_up_neither_submit_nor_other_requests(ckpt: Path, release: threading.Event) -> None:
    with Engine(EngineConfig(checkpoint=str(ckpt))) as engine:
        slow, other = CollectSink(), CollectSink()
        engine.submit(Request("slow", "caption", SLOW, max_tokens=2), slow)  # returns at once
        assert engine.stats().queue_depth >= 1  # waiting for its image counts as queued
        engine.submit(Request("other", "caption", png_bytes(1), max_tokens=2), other)
        assert other.result.num_output_tokens == 2
        assert not slow.done.is_set()  # still decoding, and nobody waited for it
        release.set()
        assert slow.result.num_output_tokens == 2
        assert slow.num_finals == other.num_finals == 1


def test_a_bad_image_ends_its_request_once_through_the_sink(ckpt: Path) -> None:
    with Engine(EngineConfig(checkpoint=str(ckpt))) as engine:
        sink = CollectSink()
        engine.submit(Request("bad", "caption", b"GIF89a\x10\x00\x10\x00 broken"), sink)
        assert sink.done.wait(30)
        assert sink.num_finals == 1 and not sink.results
        assert error_message(sink.errors[0]).startswith("INVALID_ARG: IMAGE: ")
        assert engine.num_in_flight == 0
        assert engine.stats().requests_submitted == 0  # it never reached the scheduler


def test_abort_while_the_image_decodes_cancels_the_request(ckpt: Path, release: threading.Event) -> None:
    with Engine(EngineConfig(checkpoint=str(ckpt))) as engine:
        sink = CollectSink()
        engine.submit(Request("slow", "caption", SLOW, max_tokens=200), sink)
        engine.abort("slow")
        release.set()
        assert sink.result.finish_reason == "cancelled"


def test_shutdown_while_images_decode_ends_each_request_once(ckpt: Path, release: threading.Event) -> None:
    engine = Engine(EngineConfig(checkpoint=str(ckpt), image_decode_workers=1))
    sinks = [CollectSink() for _ in range(4)]
    engine.submit(Request("slow", "caption", SLOW, max_tokens=2), sinks[0])
    for i, sink in enumerate(sinks[1:], start=1):  # queued behind the slow one
        engine.submit(Request(f"queued-{i}", "caption", png_bytes(i), max_tokens=2), sink)
    threading.Timer(0.5, release.set).start()
    engine.shutdown(timeout=10)
    for sink in sinks:
        assert sink.done.wait(30)
        assert sink.num_finals == 1
        assert isinstance(sink.errors[0], EngineStopped)
    assert engine.num_in_flight == 0


def test_damaged_images_through_the_engine_are_never_internal(ckpt: Path) -> None:
    with Engine(EngineConfig(checkpoint=str(ckpt), max_image_pixels=4_000_000)) as engine:
        seen: list[str] = []

        @derandomized(40)
        @given(case=mutated_images())
        def run(case: tuple[str, bytes]) -> None:
            name, data = case
            sink = CollectSink()
            engine.submit(Request(f"fuzz-{len(seen)}", "caption", data, max_tokens=1), sink)
            assert sink.done.wait(60) and sink.num_finals == 1, name
            if sink.errors:
                message = error_message(sink.errors[0])
                assert message.startswith("INVALID_ARG: IMAGE: "), f"{name}: {message}"
                assert isinstance(sink.errors[0], InvalidRequest)
            seen.append(name)

        run()
        assert len(seen) == 40
