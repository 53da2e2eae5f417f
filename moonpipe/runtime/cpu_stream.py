"""CPU streams: an in-order worker thread per stream, events stamped with its clock.

On CPU there is no asynchronous device, so a stream is a worker that runs the calls;
events are thread-safe completion markers stamped with the worker's clock, and ``wait``
makes a worker block until another stream reached the event. A compute *thread* shares
the GIL with the scheduler (``cpu_worker="thread"``); ``device_process.py`` is the
compute stream as a process instead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moonpipe.affinity import pin_thread
from moonpipe.runtime.streams import Event, Stream

__all__ = ["CpuEvent", "CpuStream"]


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
