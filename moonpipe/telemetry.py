"""Per-step timings and counters: what ``Engine.stats()`` reports and benchmarks read.

Definitions follow shared/docs/measuring.md: forward/sampling are device times (CUDA
events, or the CPU compute worker's own stamps); period is wall time between two
consecutive decode commits in steady state; idle = period - forward - sampling.
Written only by the scheduler thread; ``snapshot`` is read by others under a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["EngineStats", "StepTotals", "Telemetry"]

_EWMA = 0.05


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A consistent snapshot of the engine (ms values are recent averages)."""

    ready: bool
    queue_depth: int
    running: int
    zombies: int
    kv_pages_in_use: int  # held by requests
    kv_pages_total: int
    prefix_cache_pages: int  # held only by the prefix cache (freed on demand)
    prefix_cache_entries: int
    prefix_cache_hits: int  # requests admitted onto a cached image prefix
    prefix_cache_misses: int  # requests that computed their prefix (cache on)
    steps: int
    prefill_steps: int
    decode_steps: int
    period_ms: float
    forward_ms: float
    sampling_ms: float
    idle_ms: float
    batch_size_mean: float
    pipeline_depth: int
    requests_submitted: int
    requests_finished: int
    prompt_tokens: int
    generated_tokens: int


@dataclass(slots=True)
class StepTotals:
    """Cumulative decode-step sums since the last reset (for benchmarks)."""

    decode_steps: int = 0
    forward_ms: float = 0.0
    sampling_ms: float = 0.0
    rows: int = 0
    zombie_rows: int = 0
    all_zombie_steps: int = 0  # decode steps whose every row was a zombie (fully wasted)
    period_ms: float = 0.0  # sum of decode->decode commit intervals
    periods: int = 0
    # forward/sampling of the steps whose commit closed an interval: the steady-state steps
    # the period measures (ramp-up steps right after a prefill are in forward_ms, not here)
    period_forward_ms: float = 0.0
    period_sampling_ms: float = 0.0
    wall_start: float = 0.0
    wall_end: float = 0.0
    generated_outputs: int = 0


class Telemetry:
    """Accumulates step records; thread-safe snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps = 0
        self.prefill_steps = 0
        self.decode_steps = 0
        self.period_ms = 0.0
        self.forward_ms = 0.0
        self.sampling_ms = 0.0
        self.batch_mean = 0.0
        self.requests_submitted = 0
        self.requests_finished = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self._last_decode_commit: float | None = None
        self.totals = StepTotals()

    def _avg(self, old: float, new: float) -> float:
        return new if old == 0.0 else old + _EWMA * (new - old)

    def record_step(self, *, prefill: bool, batch: int, zombies: int, forward_ms: float,
                    sampling_ms: float, now: float, outputs: int) -> None:
        with self._lock:
            self.steps += 1
            self.generated_tokens += outputs
            if prefill:
                self.prefill_steps += 1
                self._last_decode_commit = None
                return
            self.decode_steps += 1
            self.forward_ms = self._avg(self.forward_ms, forward_ms)
            self.sampling_ms = self._avg(self.sampling_ms, sampling_ms)
            self.batch_mean = self._avg(self.batch_mean, float(batch))
            t = self.totals
            if self._last_decode_commit is not None:
                interval = (now - self._last_decode_commit) * 1e3
                self.period_ms = self._avg(self.period_ms, interval)
                t.period_ms += interval
                t.periods += 1
                t.period_forward_ms += forward_ms
                t.period_sampling_ms += sampling_ms
            self._last_decode_commit = now
            if t.decode_steps == 0:
                t.wall_start = now
            t.decode_steps += 1
            t.forward_ms += forward_ms
            t.sampling_ms += sampling_ms
            t.rows += batch
            t.zombie_rows += zombies
            t.all_zombie_steps += int(zombies == batch)
            t.wall_end = now
            t.generated_outputs += outputs

    def idle_gap(self) -> None:
        """The scheduler had nothing to do: the next decode commit starts a new period."""
        self._last_decode_commit = None

    def count_request(self, *, submitted: int = 0, finished: int = 0, prompt_tokens: int = 0) -> None:
        with self._lock:
            self.requests_submitted += submitted
            self.requests_finished += finished
            self.prompt_tokens += prompt_tokens

    def reset_totals(self) -> StepTotals:
        with self._lock:
            old, self.totals = self.totals, StepTotals()
            return old

    def snapshot(self, **live: int | bool) -> EngineStats:
        with self._lock:
            period = self.period_ms
            return EngineStats(
                ready=bool(live["ready"]),
                queue_depth=int(live["queue_depth"]),
                running=int(live["running"]),
                zombies=int(live["zombies"]),
                kv_pages_in_use=int(live["kv_pages_in_use"]),
                kv_pages_total=int(live["kv_pages_total"]),
                prefix_cache_pages=int(live["prefix_cache_pages"]),
                prefix_cache_entries=int(live["prefix_cache_entries"]),
                prefix_cache_hits=int(live["prefix_cache_hits"]),
                prefix_cache_misses=int(live["prefix_cache_misses"]),
                steps=self.steps,
                prefill_steps=self.prefill_steps,
                decode_steps=self.decode_steps,
                period_ms=period,
                forward_ms=self.forward_ms,
                sampling_ms=self.sampling_ms,
                idle_ms=max(0.0, period - self.forward_ms - self.sampling_ms) if period else 0.0,
                batch_size_mean=self.batch_mean,
                pipeline_depth=int(live["pipeline_depth"]),
                requests_submitted=self.requests_submitted,
                requests_finished=self.requests_finished,
                prompt_tokens=self.prompt_tokens,
                generated_tokens=self.generated_tokens,
            )
