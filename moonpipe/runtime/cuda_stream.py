"""CUDA streams: calls run now, on the caller's thread, and only enqueue kernels."""

from __future__ import annotations

from collections.abc import Callable

import torch

from moonpipe.runtime.streams import Event, Stream

__all__ = ["CudaStream"]


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
