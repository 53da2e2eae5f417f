"""A CPU compute stream that is a separate process: a device of its own, as a GPU is.

Why: on CPU a compute *thread* shares the GIL with the scheduler thread. A forward is
hundreds of small torch calls with Python between them, and the scheduler's bookkeeping
is Python too, so the two take turns instead of overlapping (measuring.md: 0% hidden at
the default switch interval). A worker process has its own interpreter and its own core:
the scheduler's bookkeeping and the forward really run at the same time.

How:

* The runner's ``DeviceWork`` (model, paged KV, slots, next-input buffers, mask table) is
  sent once to the worker through a ``torch.multiprocessing`` pipe: every tensor moves to
  shared memory, so both processes see the same bytes (the scheduler stages a slot's inputs into
  memory the worker reads; the worker writes outputs the scheduler reads).
* Work is sent as ``("call", method, args)`` messages, buffered per launch and sent as one
  list on ``flush()``; ``record()`` adds an ``("event", id)`` marker. The worker runs the
  list in order, stamps each marker with ``(id, stamp, error)`` and sends the stamps of a
  list in one message at its end; a reader thread in this process fires the matching
  :class:`CpuEvent` (an event fires after its stamp, never before). ``time.perf_counter`` is the
  system-wide monotonic clock on Linux, so worker stamps time forwards exactly as a
  thread worker's do.
* Errors follow the thread worker's rule: an exception attaches to the next event and
  the calls between are skipped. If the worker dies, every pending and later event
  fires with :class:`DeviceLost`; the scheduler treats that as fatal (the engine turns
  not-ready and every pending request gets UNAVAILABLE) instead of hanging.
* Compute and bookkeeping each get a core: with two or more CPUs the worker is pinned
  to the last ``compute_threads`` of them and the engine's host threads to the others,
  so a burst of host threads never preempts a forward.
* Workers start from a fork server that has imported torch and moonpipe once, so an
  engine starts in well under a second after the first.

Ordering (same invariant as every stream): calls run in enqueue order; an event fires
only after everything enqueued before its ``record()``. Cross-stream ``wait`` on a
foreign event is not supported (the runner never makes the compute stream wait on
another stream on CPU: uploads share it).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing as tmp

from moonpipe.affinity import pin_thread
from moonpipe.errors import DeviceLost
from moonpipe.runtime.cpu_stream import CpuEvent
from moonpipe.runtime.streams import Event, Stream

__all__ = ["ProcessStream"]

log = logging.getLogger("moonpipe.device_process")


def _context() -> Any:
    """The fork-server context. multiprocessing keeps one fork server per program; the
    preload list only matters before that server first starts, so setting it again is
    harmless."""
    ctx = tmp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "moonpipe.runtime.device_work", __name__])
    return ctx


def _picklable(error: BaseException | None) -> BaseException | None:
    """The error itself if it survives a pickle round trip (some exception classes pickle
    but cannot be rebuilt), else a RuntimeError carrying its type and message."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


SPIN_S = 0.005


def _spin_until_ready(commands: Connection) -> None:
    """Poll for the next command for up to ``SPIN_S`` before blocking in ``recv``: between
    the steps of a busy engine the worker stays on its core, warm, as a GPU driver spins
    on a stream; an idle engine's worker sleeps after 5 ms."""
    deadline = time.perf_counter() + SPIN_S
    while not commands.poll(0) and time.perf_counter() < deadline:
        pass


def _worker_main(commands: Connection, completions: Connection, num_threads: int,
                 cpus: frozenset[int] | None) -> None:
    """The worker process: receive the target, then run calls in order and answer event
    markers."""
    torch.set_num_threads(len(cpus) if cpus else num_threads)  # one torch thread per pinned CPU
    pin_thread(cpus)
    # The parent owns this process's lifetime (it exits on "stop" or when the pipe closes):
    # a SIGTERM/SIGINT sent to the parent's whole process group (Ctrl-C, docker stop,
    # Triton's stop) must not kill the device under a parent that is still draining, so
    # the worker leaves the group. Signals sent to its own pid (terminate()) still work.
    os.setpgrp()
    try:
        target = commands.recv()
    except (EOFError, OSError):
        return
    error: BaseException | None = None
    with torch.inference_mode():
        while True:
            try:
                _spin_until_ready(commands)
                batch = commands.recv()
            except (EOFError, OSError):
                return
            done: list[tuple[int, float, BaseException | None]] = []
            for item in batch:
                kind = item[0]
                if kind == "call":
                    if error is None:
                        try:
                            getattr(target, item[1])(*item[2])
                        except BaseException as exc:  # reported on the next event
                            error = exc
                elif kind == "event":
                    done.append((item[1], time.perf_counter(), _picklable(error)))
                    error = None
                elif kind == "stop":
                    completions.send(done)
                    completions.send(None)
                    return
            if done:  # one message per batch: the last event of a launch is the one awaited
                completions.send(done)


class _ProcessEvent(CpuEvent):
    __slots__ = ("owner",)

    def __init__(self, owner: ProcessStream) -> None:
        super().__init__()
        self.owner = owner


class ProcessStream(Stream):
    """The compute stream as a worker process (see module docstring)."""

    def __init__(self, target: Any, num_threads: int = 1) -> None:
        ctx = _context()
        cmd_recv, self._commands = ctx.Pipe(duplex=False)
        self._completions, done_send = ctx.Pipe(duplex=False)
        self._buffer: list[tuple[Any, ...]] = []
        self._pending: dict[int, CpuEvent] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()  # buffer, pending events, lost state
        self._send_lock = threading.Lock()  # one batch on the pipe at a time, in order
        self._lost: DeviceLost | None = None
        # Compute and bookkeeping each get cores of their own: the worker takes the last
        # `num_threads` allowed CPUs (one per torch thread), the engine's host threads
        # (scheduler, output, copy, this stream's reader) keep at least one.
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        n = min(num_threads, len(allowed) - 1)
        worker_cpus = frozenset(allowed[-n:]) if n >= 1 else None
        self.host_cpus: frozenset[int] | None = frozenset(allowed[:-n]) if n >= 1 else None
        self._proc = ctx.Process(target=_worker_main, args=(cmd_recv, done_send, num_threads, worker_cpus),
                                 name="moonpipe-compute", daemon=True)
        self._proc.start()
        cmd_recv.close()
        done_send.close()
        # Sent over the pipe, not as a Process argument: each tensor's shared-memory file
        # descriptor then travels through the resource sharer (no fd-count limit).
        self._commands.send(target)
        self._reader = threading.Thread(target=self._read, name="moonpipe-compute-events", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    # ------------------------------------------------------------ enqueueing
    def run(self, fn: Callable[[], None]) -> None:
        raise TypeError("a process stream runs named calls only: use call(method, *args)")

    def call(self, method: str, *args: Any) -> None:
        with self._lock:
            self._buffer.append(("call", method, args))

    def record(self) -> Event:
        ev = _ProcessEvent(self)
        with self._lock:
            if self._lost is not None:
                ev.fire(self._lost)
                return ev
            eid = next(self._ids)
            self._pending[eid] = ev
            self._buffer.append(("event", eid))
        return ev

    def wait(self, event: Event) -> None:
        assert isinstance(event, CpuEvent)
        if event.query() or getattr(event, "owner", None) is self:
            return  # done, or ours: this stream is in order
        raise ValueError("a process stream cannot wait for another stream's pending event")

    def flush(self) -> None:
        # The send can block (a prefill carries its crops); it holds only the send lock,
        # so the reader keeps firing events meanwhile. Batches leave in buffer order.
        with self._send_lock:
            with self._lock:
                if not self._buffer or self._lost is not None:
                    self._buffer = []
                    return
                batch, self._buffer = self._buffer, []
            try:
                self._commands.send(batch)
            except (OSError, ValueError) as exc:
                with self._lock:
                    self._lose(DeviceLost(f"the compute worker process is gone: {exc}"))

    def synchronize(self) -> None:
        ev = self.record()
        self.flush()
        ev.synchronize()

    # ------------------------------------------------------------ completions
    def _read(self) -> None:
        pin_thread(self.host_cpus)
        while True:
            try:
                msg = self._completions.recv()
            except (EOFError, OSError):
                self._proc.join(timeout=1)
                with self._lock:
                    self._lose(DeviceLost(f"the compute worker process died (exit code {self._proc.exitcode})"))
                return
            except Exception as exc:  # a reply that cannot be read: the device is unusable
                with self._lock:
                    self._lose(DeviceLost(f"the compute worker sent an unreadable reply: {exc!r}"))
                self._proc.kill()
                return
            if msg is None:
                return
            for eid, stamp, error in msg:
                with self._lock:
                    ev = self._pending.pop(eid, None)
                if ev is not None:
                    ev.fire(error, stamp)

    def _lose(self, error: DeviceLost) -> None:
        """Fail every pending event (called with the lock held)."""
        if self._lost is None:
            self._lost = error
            log.error("%s", error)
        pending, self._pending = self._pending, {}
        for ev in pending.values():
            ev.fire(self._lost)

    @property
    def healthy(self) -> bool:
        return self._lost is None

    def close(self) -> None:
        with self._send_lock, self._lock:
            if self._lost is None:
                self._buffer.append(("stop",))
                self._lost = DeviceLost("the compute worker process was closed")
                try:
                    self._commands.send(self._buffer)
                except (OSError, ValueError):
                    pass
                self._buffer = []
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._reader.join(timeout=5)
        with self._lock:
            self._lose(self._lost or DeviceLost("closed"))
        self._commands.close()
        self._completions.close()
