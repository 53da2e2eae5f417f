"""The CPU compute worker as a separate process (``EngineConfig.cpu_worker="process"``).

Same engine, same DeviceWork methods, different executor: outputs must be identical to the
thread worker's, a failed call must fail only its step, and a worker that dies must stop
the engine cleanly (every request gets a final, nothing hangs, no process is left).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_support import CollectSink, png_bytes, run_all, signature
from test_engine import assert_drained, make_engine, mixed_requests

from moonpipe.errors import DeviceLost, EngineStopped
from moonpipe.model.checkpoint import ensure_checkpoint
from moonpipe.request import Request
from moonpipe.runtime.cpu_stream import CpuEvent
from moonpipe.runtime.device_process import ProcessStream
from moonpipe.testing import FileTriggerFaultHook


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny")


class _UnrebuildableError(Exception):
    """Pickles (args = (message,)) but cannot be rebuilt: __init__ wants two arguments."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Target:
    """A picklable stream target: appends to a shared tensor, fails on request."""

    def __init__(self) -> None:
        self.log = torch.zeros(16, dtype=torch.long)
        self.n = torch.zeros(1, dtype=torch.long)

    def put(self, value: int) -> None:
        self.log[int(self.n)] = value
        self.n += 1

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def fail_oddly(self) -> None:
        raise _UnrebuildableError(7, "odd")


def test_an_error_that_cannot_be_rebuilt_arrives_as_a_runtime_error() -> None:
    stream = ProcessStream(_Target())
    try:
        stream.call("fail_oddly")
        ev = stream.record()
        stream.flush()
        with pytest.raises(RuntimeError, match="_UnrebuildableError: odd"):
            ev.synchronize()
        assert stream.healthy
    finally:
        stream.close()


def test_a_program_that_never_closes_its_worker_still_exits(tmp_path: Path) -> None:
    script = tmp_path / "leaky.py"
    script.write_text(
        "import torch\n"
        "from moonpipe.runtime.device_process import ProcessStream\n"
        "class T:\n"
        "    def __init__(self):\n"
        "        self.x = torch.zeros(1)\n"
        "    def inc(self):\n"
        "        self.x += 1\n"
        "if __name__ == '__main__':\n"
        "    s = ProcessStream(T())\n"
        "    s.call('inc'); ev = s.record(); s.flush(); ev.synchronize()\n"
        "    print('ok', flush=True)\n"  # and exit without s.close()
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_process_stream_runs_calls_in_order_and_attaches_errors_to_the_next_event() -> None:
    target = _Target()
    stream = ProcessStream(target)
    try:
        stream.call("put", 1)
        first = stream.record()
        stream.call("fail", "boom")
        stream.call("put", 99)  # skipped: between the failure and the next event
        failed = stream.record()
        stream.call("put", 2)
        last = stream.record()
        stream.flush()
        first.synchronize()
        with pytest.raises(ValueError, match="boom"):
            failed.synchronize()
        last.synchronize()  # the error was consumed by the event after it
        assert target.log[: int(target.n)].tolist() == [1, 2]  # shared memory: the worker's writes
        assert first.elapsed_ms(last) >= 0.0
        with pytest.raises(TypeError):
            stream.run(lambda: None)
        stream.wait(last)  # its own event: in order, nothing to do
        foreign = CpuEvent()
        with pytest.raises(ValueError):
            stream.wait(foreign)
    finally:
        stream.close()
    late = stream.record()
    with pytest.raises(DeviceLost):
        late.synchronize()


@pytest.mark.parametrize("depth", [1, 2])
def test_process_worker_outputs_equal_thread_worker(ckpt: Path, depth: int) -> None:
    reqs = mixed_requests("p-", max_tokens=20)
    outputs = {}
    for worker in ("thread", "process"):
        with make_engine(ckpt, pipeline_depth=depth, cpu_worker=worker) as eng:
            outputs[worker] = {rid: signature(s.result) for rid, s in run_all(eng, reqs).items()}
            assert_drained(eng)
    assert outputs["process"] == outputs["thread"]


def test_process_worker_samples_the_same_random_stream(ckpt: Path) -> None:
    req = Request("t", "caption", png_bytes(7), max_tokens=16, temperature=1.0, top_p=0.9)
    got = []
    for worker in ("thread", "process"):
        with make_engine(ckpt, cpu_worker=worker, seed=123) as eng:
            got.append(run_all(eng, [req])["t"].result.token_ids)
    assert got[0] == got[1]


def test_fault_in_the_worker_fails_only_that_step(ckpt: Path, tmp_path: Path) -> None:
    hook = FileTriggerFaultHook(str(tmp_path))  # pickled into the worker with its DeviceWork
    with make_engine(ckpt, cpu_worker="process", fault_hook=hook) as eng:
        (tmp_path / "fail-step").touch()
        sinks = run_all(eng, mixed_requests("f-", max_tokens=8))
        failed = [rid for rid, s in sinks.items() if s.errors]
        assert failed, "the armed step did not fail"
        for rid in failed:
            assert "injected fault" in str(sinks[rid].errors[0])
        assert all(s.num_finals == 1 for s in sinks.values())
        again = run_all(eng, [Request("after", "caption", png_bytes(5), max_tokens=4)])
        assert again["after"].result.num_output_tokens == 4
        assert eng.ready
        assert_drained(eng)


def test_unpicklable_fault_hook_is_a_clear_error(ckpt: Path) -> None:
    with pytest.raises(TypeError, match="must pickle"):
        make_engine(ckpt, cpu_worker="process", fault_hook=lambda kind, rows: None)


def test_killed_worker_stops_the_engine_and_fails_pending_requests(ckpt: Path) -> None:
    eng = make_engine(ckpt, cpu_worker="process")
    try:
        stream = eng.runner.streams.compute
        assert isinstance(stream, ProcessStream) and stream.pid is not None
        sinks = {}
        for r in mixed_requests("k-", max_tokens=1500, stream=True):
            sinks[r.request_id] = s = CollectSink()
            eng.submit(r, s)
        deadline = time.time() + 60
        while not any(s.deltas for s in sinks.values()) and time.time() < deadline:
            time.sleep(0.01)
        os.kill(stream.pid, signal.SIGKILL)
        for rid, s in sinks.items():
            assert s.done.wait(30), f"{rid} hung after the worker died"
            assert s.num_finals == 1
            assert s.errors and isinstance(s.errors[0], EngineStopped), rid
            assert "compute worker" in str(s.errors[0])
        assert not eng.ready
    finally:
        eng.shutdown()


def test_an_idle_engine_whose_worker_died_is_not_ready(ckpt: Path) -> None:
    with make_engine(ckpt, cpu_worker="process") as eng:
        stream = eng.runner.streams.compute
        assert isinstance(stream, ProcessStream) and stream.pid is not None and eng.ready
        os.kill(stream.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while eng.ready and time.time() < deadline:
            time.sleep(0.02)
        assert not eng.ready
        with pytest.raises(EngineStopped):
            eng.submit(Request("late", "caption", png_bytes(1)), CollectSink())


def test_shutdown_leaves_no_worker_process(ckpt: Path) -> None:
    eng = make_engine(ckpt, cpu_worker="process")
    stream = eng.runner.streams.compute
    assert isinstance(stream, ProcessStream)
    run_all(eng, [Request("one", "point", png_bytes(2), "cat", max_tokens=4)])
    eng.shutdown()
    pid = stream.pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")
def test_worker_and_host_threads_get_cores_of_their_own(ckpt: Path) -> None:
    with make_engine(ckpt, cpu_worker="process") as eng:
        stream = eng.runner.streams.compute
        assert isinstance(stream, ProcessStream) and stream.pid is not None
        worker = os.sched_getaffinity(stream.pid)
        host = eng.runner.streams.host_cpus
        assert host and len(worker) == 1 and not worker & host
        run_all(eng, [Request("pin", "caption", png_bytes(3), max_tokens=2)])  # threads are running
        sched = eng._thread.native_id
        assert sched is not None and os.sched_getaffinity(sched) == set(host)
    assert os.sched_getaffinity(0) >= worker | host  # the caller's own thread is untouched
