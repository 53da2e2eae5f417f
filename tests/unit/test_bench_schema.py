"""JSON documents, tables and plots of `moonpipe bench triton/short` from synthetic traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moonpipe.bench.latency import Trace
from moonpipe.bench.server import set_parameter
from moonpipe.bench.short import cell_metrics, format_short_table, plot_short, prefix_cache_effect
from moonpipe.bench.triton import format_triton_table, path_metrics, plot_triton


def _traces(n: int, offset: float = 0.0, tokens: int = 4) -> list[Trace]:
    return [Trace(start=offset + i, chunk_times=[offset + i + 0.1 * (k + 1) for k in range(tokens)],
                  end=offset + i + 0.1 * tokens, num_output_tokens=tokens, finish_reason="length")
            for i in range(n)]


def test_path_metrics_keys_and_counts() -> None:
    m = path_metrics([*_traces(3), Trace(start=0.0, end=1.0, error="boom")])
    assert m["requests"] == 4 and m["errors"] == 1 and m["first_error"] == "boom"
    assert m["generated_tokens"] == 12
    assert m["L"] == pytest.approx(4.0)
    for key in ("ttft", "itl", "chunk_gap", "latency"):
        assert set(m[key]) == {"n", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}
    json.dumps(m)


def test_triton_doc_table_and_plot(tmp_path: Path) -> None:
    local, remote = path_metrics(_traces(4)), path_metrics(_traces(4, tokens=4))
    doc = {"device": "cpu (test)", "torch": "x", "model": "tiny", "dtype": "float32", "workload": "w",
           "tokens_per_request": 4,
           "rows": [{"streams": n, "in_process": local, "triton": remote, "tokens_per_s_ratio": 1.0,
                     "ttft_p50_ratio": 1.0, "itl_p50_ratio": 1.0} for n in (1, 8)]}
    table = format_triton_table(doc)
    assert "in-process" in table and "triton" in table and "ratio" in table
    assert plot_triton(doc, tmp_path / "t.png").stat().st_size > 0


def test_short_doc_table_and_plot(tmp_path: Path) -> None:
    rows = [{"skill": s, "images": mode, "concurrency": c, **cell_metrics(_traces(3))}
            for s in ("query", "point") for mode in ("repeated", "unique") for c in (1, 16)]
    assert {"requests_per_s", "latency", "errors", "mean_output_tokens"} <= set(rows[0])
    doc = {"device": "cpu (test)", "torch": "x", "model": "tiny", "dtype": "float32", "path": "in_process",
           "workload": "w", "rows": rows}
    assert len(format_short_table(doc).splitlines()) == 3 + len(rows)
    assert plot_short(doc, tmp_path / "s.png").stat().st_size > 0


def test_short_rows_compare_the_prefix_cache_on_and_off(tmp_path: Path) -> None:
    """Each cell runs with the cache off and on; the effect is on/off ratios per cell."""
    off = cell_metrics(_traces(4, tokens=4))
    fast = _traces(4, tokens=4)
    for t in fast:  # the same requests, first output twice as early, each done 0.1 s sooner
        t.chunk_times = [t.start + (c - t.start) / 2 for c in t.chunk_times]
        t.end -= 0.1
    on = cell_metrics(fast)
    assert set(on["ttft"]) == {"n", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}
    rows = [{"skill": "query", "images": "repeated", "concurrency": 1, "prefix_cache": cache, **m}
            for cache, m in ((False, off), (True, on))]
    [effect] = prefix_cache_effect(rows)
    assert effect["ttft_p50_on_over_off"] == pytest.approx(0.5)
    assert effect["latency_p50_on_over_off"] == pytest.approx(0.3 / 0.4)
    assert effect["requests_per_s_on_over_off"] > 1.0
    doc = {"device": "cpu (test)", "torch": "x", "model": "tiny", "dtype": "float32", "path": "in_process",
           "workload": "w", "rows": rows, "prefix_cache_effect": [effect]}
    table = format_short_table(doc)
    assert "prefix cache on / off" in table and "0.50x" in table
    assert plot_short(doc, tmp_path / "s.png").stat().st_size > 0


def test_set_parameter_replaces_or_appends() -> None:
    text = 'parameters: { key: "max_batch_size"   value: { string_value: "8" } }\n'
    assert '"16"' in set_parameter(text, "max_batch_size", "16")
    assert '"8"' not in set_parameter(text, "max_batch_size", "16")
    added = set_parameter(text, "device", "cpu")
    assert 'key: "device" value: { string_value: "cpu" }' in added and '"8"' in added
