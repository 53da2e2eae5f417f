"""Faults at the engine level (CPU, no server), through ``Engine(..., fault_hook=...)``.

* an exception in a forward fails exactly the requests of that step (``RequestFailed``,
  ``INTERNAL: ...``) and the engine keeps serving; repeated faults under mixed load leave
  every request with exactly one final callback and nothing leaked;
* a crashed scheduler thread (a ``BaseException`` that is not an ``Exception``) makes the
  engine not ready, and every running, queued and streaming request gets
  ``EngineStopped`` (``UNAVAILABLE: ...``), never a hang;
* shutting the engine down mid-load ends every request with one final callback.

``test_faults_server.py`` repeats these through a real tritonserver.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from engine_support import CollectSink as Sink
from engine_support import png_bytes

from moonpipe.config import EngineConfig
from moonpipe.engine import Engine
from moonpipe.errors import EngineStopped, RequestFailed
from moonpipe.request import Request
from moonpipe.testing import InjectedCrash, SwitchableFaultHook

pytestmark = pytest.mark.reliability

WAIT_S = 60.0


@pytest.fixture
def faults() -> SwitchableFaultHook:
    return SwitchableFaultHook()


@pytest.fixture
def engine(tiny_checkpoint: Path, faults: SwitchableFaultHook) -> Iterator[Engine]:
    eng = Engine(EngineConfig(checkpoint=str(tiny_checkpoint), max_batch_size=4, max_queue=16),
                 fault_hook=faults)
    try:
        yield eng
    finally:
        faults.fault = None
        eng.shutdown(timeout=10)


def _long(rid: str, seed: int = 1) -> Request:
    return Request(rid, "caption", png_bytes(seed, (120, 90)), max_tokens=400, temperature=1.0, stream=True)


def _short(rid: str, seed: int = 2) -> Request:
    return Request(rid, "query", png_bytes(seed, (120, 90)), "what is it?", max_tokens=8, temperature=0.0)


def _submit(engine: Engine, requests: list[Request]) -> dict[str, Sink]:
    sinks = {}
    for r in requests:
        sinks[r.request_id] = Sink()
        engine.submit(r, sinks[r.request_id])
    return sinks


def _wait_all(sinks: dict[str, Sink], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    for rid, s in sinks.items():
        assert s.done.wait(max(0.1, deadline - time.monotonic())), f"{rid}: no final callback (hang)"
    time.sleep(0.1)  # a second final callback would arrive now
    for rid, s in sinks.items():
        assert s.num_finals == 1, f"{rid}: {s.num_finals} final callbacks"


def _wait_drained(engine: Engine, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = engine.stats()
        if (st.kv_pages_in_use, st.running, st.zombies, st.queue_depth) == (0, 0, 0, 0):
            return
        assert time.monotonic() < deadline, f"engine not drained: {st}"
        time.sleep(0.02)


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _arm(faults: SwitchableFaultHook, make_error: Callable[[], BaseException]) -> threading.Event:
    """Fail the next decode step; returns an event set when it fired."""
    fired = threading.Event()

    def hook(kind: str, seq_rows: list[int]) -> None:
        if kind == "decode" and not fired.is_set():
            fired.set()
            raise make_error()

    faults.fault = hook
    return fired


def test_fault_fails_only_the_running_step_and_queued_requests_complete(engine: Engine, faults: SwitchableFaultHook) -> None:
    reference = _submit(engine, [_short("ref")])
    _wait_all(reference)
    running = _submit(engine, [_long(f"run-{i}", seed=i) for i in range(4)])
    for rid, s in running.items():
        assert s.first.wait(WAIT_S), f"{rid} never streamed"
    queued = _submit(engine, [_short(f"queued-{i}") for i in range(3)])  # no seq slot left: they wait
    _wait_for(lambda: engine.stats().queue_depth == 3, "3 queued requests")

    fired = _arm(faults, lambda: RuntimeError("injected fault"))
    _wait_all(running | queued)

    assert fired.is_set()
    for rid, s in running.items():
        assert len(s.errors) == 1 and isinstance(s.errors[0], RequestFailed), (rid, s.results)
        assert str(s.errors[0]).startswith("INTERNAL: ") and "injected fault" in str(s.errors[0])
    for rid, s in queued.items():
        assert not s.errors, (rid, s.errors)
        assert s.results[0].token_ids == reference["ref"].results[0].token_ids
    assert engine.ready
    _wait_drained(engine)


def test_repeated_faults_under_mixed_load_end_every_request_once(engine: Engine, faults: SwitchableFaultHook) -> None:
    steps = iter(range(10**9))
    failed_steps = []

    def hook(kind: str, seq_rows: list[int]) -> None:
        step = next(steps)
        if step % 9 == 4:
            failed_steps.append((kind, step))
            raise RuntimeError(f"injected fault at {kind} call {step}")

    faults.fault = hook
    requests = []
    for i in range(20):  # max_queue + max_batch_size: the most the engine holds
        kind = i % 4
        if kind == 0:
            requests.append(_long(f"m-{i}", seed=i))
        elif kind == 1:
            requests.append(_short(f"m-{i}", seed=i))
        elif kind == 2:
            requests.append(Request(f"m-{i}", "point", png_bytes(i, (120, 90)), "cat", max_objects=5, stream=True))
        else:
            requests.append(Request(f"m-{i}", "segment", png_bytes(i, (120, 90)), "cup", max_tokens=48))
    sinks = _submit(engine, requests)
    _wait_all(sinks, timeout=120)
    faults.fault = None

    assert failed_steps
    errors = [e for s in sinks.values() for e in s.errors]
    assert errors, "no request was in a failed step"
    assert all(isinstance(e, RequestFailed) and "injected fault" in str(e) for e in errors), errors
    assert all(r.finish_reason in ("stop", "length") for s in sinks.values() for r in s.results)
    assert engine.ready
    after = _submit(engine, [_short("after")])
    _wait_all(after)
    assert after["after"].results and after["after"].results[0].num_output_tokens > 0
    _wait_drained(engine)


def test_crashed_scheduler_fails_every_pending_request_and_reports_not_ready(engine: Engine, faults: SwitchableFaultHook) -> None:
    running = _submit(engine, [_long(f"run-{i}", seed=i) for i in range(4)])
    for rid, s in running.items():
        assert s.first.wait(WAIT_S), f"{rid} never streamed"
    queued = _submit(engine, [_short(f"queued-{i}") for i in range(5)])

    fired = _arm(faults, lambda: InjectedCrash("injected scheduler crash"))
    _wait_all(running | queued)

    assert fired.is_set()
    for rid, s in (running | queued).items():
        assert len(s.errors) == 1 and isinstance(s.errors[0], EngineStopped), (rid, s.results)
        assert str(s.errors[0]).startswith("UNAVAILABLE: the scheduler thread crashed")
    assert not engine.ready
    assert engine.stats() is not None  # stats still answer (no hang on a dead thread)
    with pytest.raises(EngineStopped, match="UNAVAILABLE"):
        engine.submit(_short("late"), Sink())
    started = time.monotonic()
    engine.shutdown(timeout=10)
    assert time.monotonic() - started < 15


def test_shutdown_mid_load_ends_every_request_once(engine: Engine) -> None:
    running = _submit(engine, [_long(f"run-{i}", seed=i) for i in range(4)])
    for rid, s in running.items():
        assert s.first.wait(WAIT_S), f"{rid} never streamed"
    queued = _submit(engine, [_long(f"queued-{i}", seed=10 + i) for i in range(6)])

    engine.shutdown(timeout=10)
    _wait_all(running | queued, timeout=20)

    for rid, s in (running | queued).items():
        assert len(s.errors) == 1 and isinstance(s.errors[0], EngineStopped), (rid, s.results)
        assert str(s.errors[0]).startswith("UNAVAILABLE")
    assert not engine.ready
    with pytest.raises(EngineStopped):
        engine.submit(_short("late"), Sink())
