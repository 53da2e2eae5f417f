"""Device streams and events with one interface on CUDA and on CPU.

The runner enqueues work on streams and never waits for compute while launching. Work is
a named method of the stream's *target* (``runtime/device_work.py``) with plain
arguments (``stream.call("decode", slot)``), so it can also cross a process boundary:

* ``compute``: every forward and every sampling step, in order (one stream for both
  slots: the slots are not for GPU parallelism).
* ``copy``: device->host copies of step outputs, ordered after the step's sampling by an
  event, so the host reads results without stalling the compute stream.
* ``upload``: host->device copies of staged step inputs (pinned buffers).

On CUDA a call runs immediately on the calling thread inside ``torch.cuda.stream(s)``:
it only *enqueues* kernels. On CPU there is no asynchronous device, so a stream is an
in-order worker that runs the calls; events are thread-safe completion markers stamped
with the worker's clock, and ``wait`` makes a worker block until another stream reached
the event. The CPU compute worker is either a thread (``cpu_worker="thread"``) or a
separate process over shared-memory tensors (``"process"``, ``runtime/device_process.py``):
a thread shares the GIL with the scheduler, so Python bookkeeping and the forward's
Python-level dispatch take turns; a process is a device of its own, like a GPU.
Uploads run on the compute worker on CPU (a host->host copy has nothing to overlap with;
a third thread only adds GIL traffic).

Invariant (both backends): work enqueued on one stream runs in enqueue order; an event
fires only after everything enqueued on its stream before ``record()`` has finished.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CpuEvent", "CpuStream", "CudaStream", "DeviceLost", "Event", "Stream", "StreamSet", "make_streams",
           "pin_thread"]


def pin_thread(cpus: frozenset[int] | None) -> None:
    """Restrict the calling thread to ``cpus`` (Linux; a no-op for None or elsewhere)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass


class DeviceLost(RuntimeError):
    """A stream's worker is gone (a CPU worker process crashed or was killed): no later
    step can run, so the scheduler treats it as fatal rather than failing one step."""


class Event(ABC):
    """Marks a point in a stream. ``time()`` is the completion time in seconds (CPU only)."""

    @abstractmethod
    def synchronize(self) -> None: ...

    def wait_done(self) -> None:
        """Block until the event is reached, without raising an error attached to it."""
        self.synchronize()

    @abstractmethod
    def query(self) -> bool: ...

    @abstractmethod
    def elapsed_ms(self, end: Event) -> float:
        """Device time from this event to ``end`` (both must have completed)."""


class Stream(ABC):
    """An in-order queue of device work."""

    target: Any = None  # the object whose methods ``call`` runs (a DeviceWork)

    @abstractmethod
    def run(self, fn: Callable[[], None]) -> None:
        """Enqueue ``fn``; returns without waiting for it (CPU) or after enqueuing kernels (CUDA)."""

    def call(self, method: str, *args: Any) -> None:
        """Enqueue ``target.method(*args)``."""
        self.run(functools.partial(getattr(self.target, method), *args))

    def flush(self) -> None:  # noqa: B027 - only a process stream buffers
        """Hand buffered work to the worker (a process stream sends it in one message)."""

    @property
    def healthy(self) -> bool:
        """False once the stream's worker is gone for good (a process worker died)."""
        return True

    @abstractmethod
    def record(self) -> Event: ...

    @abstractmethod
    def wait(self, event: Event) -> None:
        """Work enqueued after this call starts only once ``event`` has fired."""

    @abstractmethod
    def synchronize(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for CUDA streams
        """Release the stream (stops a CPU worker)."""


# ----------------------------------------------------------------------------- CPU


class CpuEvent(Event):
    __slots__ = ("_done", "_error", "stamp")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.stamp = 0.0
        self._error: BaseException | None = None

    def fire(self, error: BaseException | None = None, stamp: float | None = None) -> None:
        self.stamp = time.perf_counter() if stamp is None else stamp
        self._error = error
        self._done.set()

    def wait_done(self) -> None:
        """Block until fired, without raising the attached error."""
        self._done.wait()

    def synchronize(self) -> None:
        self._done.wait()
        if self._error is not None:
            raise self._error

    def query(self) -> bool:
        return self._done.is_set()

    def elapsed_ms(self, end: Event) -> float:
        assert isinstance(end, CpuEvent)
        return (end.stamp - self.stamp) * 1e3


@dataclass(slots=True)
class _Wait:
    event: CpuEvent


class CpuStream(Stream):
    """An in-order worker thread.

    An exception raised by a closure is attached to the next event recorded on the stream
    (its ``synchronize`` re-raises it) and then forgotten, so one failed step does not
    poison the steps after it; closures between the failure and that event are skipped.
    """

    def __init__(self, name: str, num_threads: int = 1, cpus: frozenset[int] | None = None) -> None:
        self._cpus = cpus
        self._queue: queue.SimpleQueue[Callable[[], None] | CpuEvent | _Wait | None] = queue.SimpleQueue()
        self._num_threads = num_threads
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"moonpipe-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # Per-thread torch state: the compute worker is where forwards run.
        torch.set_num_threads(self._num_threads)
        pin_thread(self._cpus)
        with torch.inference_mode():
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, CpuEvent):
                    item.fire(self._error)
                    self._error = None
                elif isinstance(item, _Wait):
                    item.event.wait_done()
                elif self._error is None:
                    try:
                        item()
                    except BaseException as exc:
                        self._error = exc

    def run(self, fn: Callable[[], None]) -> None:
        self._queue.put(fn)

    def record(self) -> Event:
        ev = CpuEvent()
        self._queue.put(ev)
        return ev

    def wait(self, event: Event) -> None:
        assert isinstance(event, CpuEvent)
        if not event.query():
            self._queue.put(_Wait(event))

    def synchronize(self) -> None:
        self.record().synchronize()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------- CUDA


class _CudaEvent(Event):
    __slots__ = ("ev",)

    def __init__(self, ev: torch.cuda.Event) -> None:
        self.ev = ev

    def synchronize(self) -> None:
        self.ev.synchronize()

    def query(self) -> bool:
        return bool(self.ev.query())

    def elapsed_ms(self, end: Event) -> float:
        assert isinstance(end, _CudaEvent)
        return float(self.ev.elapsed_time(end.ev))


class CudaStream(Stream):
    """A ``torch.cuda.Stream``; closures run now, on the caller's thread, under it."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device=device)

    def run(self, fn: Callable[[], None]) -> None:
        with torch.cuda.stream(self.stream):
            fn()

    def record(self) -> Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(self.stream)
        return _CudaEvent(ev)

    def wait(self, event: Event) -> None:
        assert isinstance(event, _CudaEvent)
        self.stream.wait_event(event.ev)

    def synchronize(self) -> None:
        self.stream.synchronize()


@dataclass(frozen=True, slots=True)
class StreamSet:
    """The three streams of one engine."""

    compute: Stream
    copy: Stream
    upload: Stream

    @property
    def host_cpus(self) -> frozenset[int] | None:
        """CPUs for the engine's host threads when a process worker holds a core of its own."""
        cpus: frozenset[int] | None = getattr(self.compute, "host_cpus", None)
        return cpus

    def _unique(self) -> list[Stream]:
        return list({id(self.compute): self.compute, id(self.copy): self.copy, id(self.upload): self.upload}.values())

    def flush(self) -> None:
        for s in self._unique():
            s.flush()

    def close(self) -> None:
        for s in self._unique():
            s.close()


def make_streams(device: torch.device, target: Any, compute_threads: int = 1,
                 cpu_worker: str = "thread") -> StreamSet:
    """CUDA streams on a GPU; on CPU a compute worker (thread or process) that also does
    the uploads, and a copy thread. Every stream calls methods of ``target``."""
    if device.type == "cuda":
        streams = StreamSet(compute=CudaStream(device), copy=CudaStream(device), upload=CudaStream(device))
    else:
        compute: Stream
        host_cpus: frozenset[int] | None = None
        if cpu_worker == "process":
            from moonpipe.runtime.device_process import ProcessStream

            compute = ProcessStream(target, num_threads=compute_threads)
            host_cpus = compute.host_cpus
        else:
            compute = CpuStream("compute", num_threads=compute_threads)
        streams = StreamSet(compute=compute, copy=CpuStream("copy", cpus=host_cpus), upload=compute)
    for s in streams._unique():
        s.target = target
    return streams
