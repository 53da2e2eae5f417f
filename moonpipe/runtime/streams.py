"""Device streams and events: one interface on CUDA and on CPU.

The runner enqueues work on streams and never waits for compute while launching. Work is
a named method of the stream's *target* (``runtime/device_work.py``) with plain
arguments (``stream.call("decode", slot, shape)``), so it can also cross a process
boundary:

* ``compute``: every forward and every sampling step, in order (one stream for both
  slots: the slots are not for GPU parallelism).
* ``copy``: device->host copies of step outputs, ordered after the step's sampling by an
  event, so the host reads results without stalling the compute stream.
* ``upload``: host->device copies of staged step inputs (pinned buffers).

Implementations: ``cuda_stream.py`` (a ``torch.cuda.Stream``: calls only enqueue
kernels), ``cpu_stream.py`` (an in-order worker thread) and ``device_process.py`` (an
in-order worker process over shared-memory tensors); ``stream_set.py`` picks them.

Invariant (every implementation): work enqueued on one stream runs in enqueue order; an
event fires only after everything enqueued on its stream before ``record()`` has
finished.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "Stream", "StreamSet"]


class Event(ABC):
    """Marks a point in a stream: it fires once everything enqueued before it has run."""

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


@dataclass(frozen=True, slots=True)
class StreamSet:
    """The three streams of one engine (``stream_set.make_streams`` builds them).

    ``host_cpus``: the CPUs left to the engine's host threads when a process compute
    worker holds core(s) of its own; None when nothing is pinned.
    """

    compute: Stream
    copy: Stream
    upload: Stream
    host_cpus: frozenset[int] | None = None

    def distinct(self) -> list[Stream]:
        """Each stream once (on CPU the compute stream also does the uploads)."""
        return list({id(self.compute): self.compute, id(self.copy): self.copy, id(self.upload): self.upload}.values())

    def flush(self) -> None:
        for s in self.distinct():
            s.flush()

    def close(self) -> None:
        for s in self.distinct():
            s.close()
