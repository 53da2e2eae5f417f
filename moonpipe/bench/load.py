"""Closed-loop load generators: the same request list in-process or over gRPC.

``concurrency`` requests are kept in flight: a new one is sent as soon as one finishes,
until the list is exhausted. Both drivers return one :class:`~moonpipe.bench.latency.Trace`
per request (in list order) with client-side marks, so in-process and Triton runs are
measured at the same place: where a caller gets its output.

- :func:`run_in_process` calls ``Engine.submit`` from the calling thread (which also pays
  image decoding, as a caller would) and timestamps the engine's Sink callbacks;
- :func:`run_over_grpc` drives the real server with ``moonpipe_client.AsyncClient`` from
  one asyncio loop (each request is its own ``ModelStreamInfer`` call).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from moonpipe.bench.common import bench_image
from moonpipe.bench.latency import Trace
from moonpipe.engine import Engine
from moonpipe.errors import EngineError
from moonpipe.request import Delta, Request, Result

__all__ = ["RequestSpec", "jpeg_image", "run_in_process", "run_over_grpc"]


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload (the same fields in-process and over gRPC)."""

    skill: str
    image: bytes
    prompt: str = ""
    length: str = "normal"
    max_tokens: int | None = None
    max_objects: int | None = None
    temperature: float | None = 0.0
    stream: bool = False

    def to_request(self, request_id: str) -> Request:
        return Request(request_id, self.skill, self.image, prompt=self.prompt, length=self.length,
                       max_tokens=self.max_tokens, max_objects=self.max_objects,
                       temperature=self.temperature if self.skill in ("caption", "query") else None,
                       stream=self.stream)


def jpeg_image(seed: int, size: tuple[int, int] = (640, 480), quality: int = 90) -> bytes:
    """``bench_image(seed)`` re-encoded as JPEG (~50-100 kB: a realistic upload size)."""
    with Image.open(io.BytesIO(bench_image(seed, size))) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class _TraceSink:
    """Engine Sink that stamps arrivals into traces and frees a concurrency slot at the end."""

    def __init__(self, traces: dict[str, Trace], slots: threading.Semaphore, total: int) -> None:
        self._traces = traces
        self._slots = slots
        self._left = total
        self._lock = threading.Lock()
        self.done = threading.Event()

    def on_delta(self, request_id: str, delta: Delta) -> None:
        self._traces[request_id].chunk_times.append(time.perf_counter())

    def _finish(self, request_id: str, result: Result | None, error: str) -> None:
        trace = self._traces[request_id]
        trace.end = time.perf_counter()
        if result is not None:
            trace.num_output_tokens = result.num_output_tokens
            trace.finish_reason = result.finish_reason
        trace.error = error
        self._slots.release()
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self.done.set()

    def on_result(self, request_id: str, result: Result) -> None:
        self._finish(request_id, result, result.error if result.finish_reason == "error" else "")

    def on_error(self, request_id: str, error: EngineError) -> None:
        self._finish(request_id, None, str(error) or type(error).__name__)


def run_in_process(engine: Engine, specs: Sequence[RequestSpec], concurrency: int, *, tag: str,
                   timeout: float = 600.0) -> list[Trace]:
    """Run ``specs`` through ``engine`` with ``concurrency`` in flight; traces in list order."""
    if not specs:
        return []
    ids = [f"{tag}-{i}" for i in range(len(specs))]
    traces: dict[str, Trace] = {}
    slots = threading.Semaphore(concurrency)
    sink = _TraceSink(traces, slots, len(specs))
    deadline = time.monotonic() + timeout
    for rid, spec in zip(ids, specs, strict=True):
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"in-process load run {tag!r} timed out")
        request = spec.to_request(rid)
        traces[rid] = Trace(start=time.perf_counter())
        engine.submit(request, sink)
    if not sink.done.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"in-process load run {tag!r} timed out")
    return [traces[rid] for rid in ids]


async def _one_grpc(client: Any, spec: RequestSpec, trace: Trace) -> None:
    from moonpipe_client import MoonpipeError

    kw: dict[str, Any] = {}
    if spec.skill in ("caption", "query"):
        kw = {"max_tokens": spec.max_tokens, "temperature": spec.temperature}
    elif spec.skill in ("point", "detect"):
        kw = {"max_objects": spec.max_objects}
    args: tuple[Any, ...] = (spec.image, spec.length) if spec.skill == "caption" else (spec.image, spec.prompt)
    method = getattr(client, spec.skill)
    trace.start = time.perf_counter()
    try:
        if spec.stream:
            stream = method(*args, stream=True, **kw)
            try:
                async for _ in stream:
                    trace.chunk_times.append(time.perf_counter())
            finally:
                stream.cancel()
            result = stream.result
        else:
            result = await method(*args, **kw)
    except MoonpipeError as exc:
        trace.end = time.perf_counter()
        trace.error = f"{type(exc).__name__}: {exc}"
        return
    trace.end = time.perf_counter()
    if result is None:
        trace.error = "stream ended without a result"
        return
    trace.num_output_tokens = int(result.num_output_tokens)
    trace.finish_reason = str(result.finish_reason)


async def closed_loop(count: int, concurrency: int, run_one: Callable[[int], Awaitable[None]],
                      timeout: float) -> None:
    """Run ``run_one(i)`` for every ``i < count`` with ``concurrency`` in flight: each of
    ``concurrency`` workers takes the next index as soon as its request is done."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await run_one(i)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)


async def _grpc_main(url: str, specs: Sequence[RequestSpec], concurrency: int, timeout: float) -> list[Trace]:
    from moonpipe_client import AsyncClient

    traces = [Trace(start=0.0) for _ in specs]
    async with AsyncClient(url, timeout=timeout) as client:
        await closed_loop(len(specs), concurrency, lambda i: _one_grpc(client, specs[i], traces[i]), timeout)
    return traces


def run_over_grpc(url: str, specs: Sequence[RequestSpec], concurrency: int, *,
                  timeout: float = 600.0) -> list[Trace]:
    """Run ``specs`` against the server at ``url`` (``host:port``) with ``concurrency`` in flight."""
    if not specs:
        return []
    return asyncio.run(_grpc_main(url, specs, concurrency, timeout))
