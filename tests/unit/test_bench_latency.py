"""Pure parts of the load benchmarks: percentiles, traces, summaries (no timing asserted)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonpipe.bench.latency import Trace, percentile, summarize, trace_summaries

VALUES = st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=50)


@given(VALUES, st.floats(min_value=0.0, max_value=100.0))
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def test_percentile_rejects_empty_and_bad_q() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_converts_seconds_to_ms() -> None:
    s = summarize([0.001, 0.002, 0.003, 0.004])
    assert s.n == 4
    assert s.mean_ms == pytest.approx(2.5)
    assert s.p50_ms == pytest.approx(2.5)
    assert s.max_ms == pytest.approx(4.0)
    assert summarize([]).n == 0


def test_trace_ttft_itl_and_gaps() -> None:
    t = Trace(start=10.0, chunk_times=[10.1, 10.2, 10.4], end=10.5, num_output_tokens=5)
    assert t.ok
    assert t.ttft == pytest.approx(0.1)
    assert t.latency == pytest.approx(0.5)
    assert t.itl == pytest.approx(0.4 / 4)  # per token, not per chunk: coalescing-proof
    assert t.chunk_gaps() == pytest.approx([0.1, 0.2, 0.1])


def test_trace_without_chunks_uses_the_end() -> None:
    t = Trace(start=1.0, end=1.25, num_output_tokens=1)
    assert t.ttft == pytest.approx(0.25)
    assert t.itl is None
    assert t.chunk_gaps() == []


def test_failed_traces_are_left_out_of_summaries() -> None:
    good = Trace(start=0.0, chunk_times=[0.01], end=0.03, num_output_tokens=3)
    bad = Trace(start=0.0, end=0.5, error="INTERNAL: boom")
    sums = trace_summaries([good, bad])
    assert sums["ttft"].n == 1
    assert sums["latency"].p50_ms == pytest.approx(30.0)
    assert sums["itl"].p50_ms == pytest.approx(10.0)
