"""Soak: the async client at high concurrency with mixed skills for a bounded time.

Zero errors, greedy answers identical every time they are asked, the server's resident
memory (tritonserver + stub processes, from /proc) drifting less than 5% after warm-up,
and no page, sequence or queued request left at the end.

``MOONPIPE_SOAK_SECONDS`` sets the whole duration, warm-up (a quarter, 10-60 s) included:
60 s in the default run (``make test``), 300 s in ``make soak``.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from reliability.conftest import Target
from reliability.support import group_rss_bytes, model_ready, picture, stub_pids, wait_idle

pytestmark = pytest.mark.reliability

SOAK_SECONDS = float(os.environ.get("MOONPIPE_SOAK_SECONDS", "60"))
CONCURRENCY = 32
NUM_IMAGES = 24  # more than the engine's image cache (16): encodes and evictions keep happening
MAX_DRIFT = 0.05
SAMPLE_EVERY_S = 1.0


def _warmup_seconds(duration: float) -> float:
    return min(60.0, max(10.0, 0.25 * duration))


Call = Callable[[Any], Awaitable[Any]]


def _mix(images: list[bytes], rng: random.Random) -> tuple[str, bool, Call]:
    """(key, greedy, call): a random request of a random skill; greedy ones have a key
    under which every answer must be identical."""
    index = rng.randrange(len(images))
    image = images[index]
    choice = rng.randrange(8)
    if choice == 0:
        return f"caption-{index}", True, lambda c: c.caption(image, "short", max_tokens=16, temperature=0.0)
    if choice == 1:
        return "", False, lambda c: c.caption(image, max_tokens=rng.randint(4, 32), temperature=1.0)
    if choice == 2:
        return f"query-{index}", True, lambda c: c.query(image, "what is in the picture?", max_tokens=16,
                                                         temperature=0.0)
    if choice == 3:
        return f"point-{index}", True, lambda c: c.point(image, "cat", max_objects=6)
    if choice == 4:
        return f"detect-{index}", True, lambda c: c.detect(image, "dog", max_objects=6)
    if choice == 5:
        return "", False, lambda c: c.segment(image, "cup", max_tokens=64)  # sampled: skill default

    async def streamed(c: Any) -> Any:
        stream = c.query(image, "describe it", stream=True, max_tokens=24, temperature=0.7)
        async for _ in stream:
            pass
        return stream.result

    return "", False, streamed


async def _soak(url: str, duration: float, seed: int) -> tuple[Counter[str], list[str], dict[str, int]]:
    from moonpipe_client import AsyncClient

    rng = random.Random(seed)
    images = [picture(i, 96 + 8 * i, 128 - 2 * i) for i in range(NUM_IMAGES)]
    finished: Counter[str] = Counter()
    errors: list[str] = []
    mismatched: dict[str, int] = {}
    references: dict[str, Any] = {}
    deadline = time.monotonic() + duration

    async with AsyncClient(url, timeout=120) as client:
        async def worker() -> None:
            while time.monotonic() < deadline and len(errors) < 20:
                key, greedy, call = _mix(images, rng)
                try:
                    result = await call(client)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                finished[result.finish_reason] += 1
                if greedy:
                    expected = references.setdefault(key, result)
                    if result != expected:
                        mismatched[key] = mismatched.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return finished, errors, mismatched


def test_soak_zero_errors_no_memory_drift_no_leaks(target: Target) -> None:
    pgid = target.pgid
    stubs = stub_pids(pgid)
    warmup = _warmup_seconds(SOAK_SECONDS)
    samples: list[tuple[float, int]] = []  # (seconds since start, RSS bytes)
    stop = asyncio.Event()

    async def sample() -> None:
        start = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - start, group_rss_bytes(pgid)))
            try:
                await asyncio.wait_for(stop.wait(), timeout=SAMPLE_EVERY_S)
            except TimeoutError:
                pass

    async def main() -> tuple[Counter[str], list[str], dict[str, int]]:
        sampler = asyncio.create_task(sample())
        try:
            return await asyncio.wait_for(_soak(target.grpc_url, SOAK_SECONDS, seed=7),
                                          timeout=SOAK_SECONDS + 180)
        finally:
            stop.set()
            await sampler

    finished, errors, mismatched = asyncio.run(main())

    measured = [rss for t, rss in samples if t >= warmup]
    assert len(measured) >= 10, f"too few RSS samples after warm-up: {samples}"
    window = max(5, len(measured) // 3)  # medians of the first and last thirds: RSS jitters ~2%
    head = statistics.median(measured[:window])
    tail = statistics.median(measured[-window:])
    drift = (tail - head) / head
    mib = [round(rss / 2**20) for _, rss in samples]
    print(f"\nsoak: {SOAK_SECONDS:.0f} s ({warmup:.0f} s warm-up), concurrency {CONCURRENCY}: "
          f"{sum(finished.values())} requests {dict(finished)}, errors {len(errors)}; "
          f"RSS {head / 2**20:.0f} -> {tail / 2**20:.0f} MiB ({drift:+.2%}); samples (MiB) {mib}")
    assert not errors, errors[:5]
    assert not mismatched, f"greedy answers changed between identical requests: {mismatched}"
    assert set(finished) <= {"stop", "length"}, finished
    assert sum(finished.values()) >= CONCURRENCY
    assert drift < MAX_DRIFT, f"server RSS grew {drift:.2%} after warm-up (samples in MiB: {mib})"
    gauges = wait_idle(target.metrics_url, timeout=60)
    assert gauges == dict.fromkeys(gauges, 0.0)
    assert model_ready(target.http_url)
    assert stub_pids(pgid) == stubs, "the stub process was replaced (it crashed)"
