"""Latency bookkeeping for the load benchmarks: per-request traces and percentiles.

A :class:`Trace` holds the client-side ``time.perf_counter`` marks of one request: when it
was sent, when each response chunk arrived, when the final result arrived. From traces:

- TTFT (time to first token) = first chunk - start; a request that produced no streamed
  chunk uses the final result's arrival.
- ITL (inter-token latency) of one request = (end - first) / (output tokens - 1): the mean
  time per generated token after the first. It does not depend on how many tokens the
  server put in one response (the Triton adapter coalesces deltas under load), so the
  in-process and the gRPC runs compare like for like.
- chunk gap: every gap between consecutive chunks of a request, for the distribution of
  what a streaming client actually sees.
- latency: end - start (the whole request).

Percentiles interpolate linearly between order statistics, as ``numpy.percentile``'s
default does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["LatencySummary", "Trace", "percentile", "summarize", "trace_summaries"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` with linear interpolation.

    Raises ``ValueError`` for an empty sequence or ``q`` outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    frac = rank - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Mean and percentiles of one latency measure, in milliseconds."""

    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def summarize(seconds: Iterable[float]) -> LatencySummary:
    """Summarise latencies given in seconds (an empty input gives an all-zero summary)."""
    ms = [1000.0 * s for s in seconds]
    if not ms:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    return LatencySummary(
        n=len(ms),
        mean_ms=sum(ms) / len(ms),
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms),
    )


@dataclass(slots=True)
class Trace:
    """Client-side marks of one request (``time.perf_counter`` seconds)."""

    start: float
    chunk_times: list[float] = field(default_factory=list)
    end: float = 0.0
    num_output_tokens: int = 0
    finish_reason: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.end > 0.0

    @property
    def first(self) -> float:
        return self.chunk_times[0] if self.chunk_times else self.end

    @property
    def ttft(self) -> float:
        return max(0.0, self.first - self.start)

    @property
    def latency(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def itl(self) -> float | None:
        """Mean seconds per token after the first; None with fewer than two tokens."""
        if self.num_output_tokens < 2:
            return None
        return max(0.0, self.end - self.first) / (self.num_output_tokens - 1)

    def chunk_gaps(self) -> list[float]:
        marks = [*self.chunk_times]
        if self.end and (not marks or self.end > marks[-1]):
            marks.append(self.end)
        return [b - a for a, b in itertools.pairwise(marks)]


def trace_summaries(traces: Sequence[Trace]) -> dict[str, LatencySummary]:
    """TTFT, ITL, chunk-gap and whole-request latency summaries of the successful traces."""
    good = [t for t in traces if t.ok]
    itls = [t.itl for t in good]
    return {
        "ttft": summarize(t.ttft for t in good),
        "itl": summarize(x for x in itls if x is not None),
        "chunk_gap": summarize(g for t in good for g in t.chunk_gaps()),
        "latency": summarize(t.latency for t in good),
    }
