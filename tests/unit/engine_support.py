"""Helpers shared by the engine tests: a collecting Sink and request runners."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from moonpipe.engine import Engine
from moonpipe.errors import EngineError
from moonpipe.request import Delta, Request, Result

# Moondream's reference outputs for a tiny random checkpoint (shipped test data, ~24 MB).
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden" / "md2-tiny"


@dataclass
class CollectSink:
    """Records everything the engine delivers for one request."""

    deltas: list[Delta] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    errors: list[EngineError] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    first: threading.Event = field(default_factory=threading.Event)  # a delta arrived

    def on_delta(self, request_id: str, delta: Delta) -> None:
        assert not self.done.is_set(), "delta after the final callback"
        self.deltas.append(delta)
        self.first.set()

    def on_result(self, request_id: str, result: Result) -> None:
        self.results.append(result)
        self.done.set()

    def on_error(self, request_id: str, error: EngineError) -> None:
        self.errors.append(error)
        self.done.set()

    @property
    def num_finals(self) -> int:
        return len(self.results) + len(self.errors)

    @property
    def result(self) -> Result:
        assert self.done.wait(120), "no final callback"
        assert not self.errors, self.errors
        assert len(self.results) == 1
        return self.results[0]


def png_bytes(seed: int, size: tuple[int, int] = (200, 150)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def run_all(engine: Engine, requests: list[Request], timeout: float = 120) -> dict[str, CollectSink]:
    sinks = {}
    for r in requests:
        sinks[r.request_id] = s = CollectSink()
        engine.submit(r, s)
    for rid, s in sinks.items():
        assert s.done.wait(timeout), f"{rid}: no final callback"
    return sinks


def signature(result: Result) -> tuple[object, ...]:
    """What must be identical between depth 1 and depth 2 (greedy)."""
    return (result.finish_reason, result.token_ids, result.points, result.boxes, result.svg_path,
            result.num_output_tokens)
