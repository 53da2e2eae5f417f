"""The custom metric families on :8002/metrics and the per-request log line."""

from __future__ import annotations

import time

import pytest
from conftest import Caller, ServerHandle, metric_value

pytestmark = pytest.mark.e2e

FAMILIES = (
    "moonpipe_requests_total", "moonpipe_prompt_tokens_total", "moonpipe_generated_tokens_total",
    "moonpipe_time_to_first_token_seconds", "moonpipe_inter_token_latency_seconds",
    "moonpipe_queue_depth", "moonpipe_running_sequences", "moonpipe_zombie_sequences",
    "moonpipe_kv_pages_in_use", "moonpipe_kv_pages_total", "moonpipe_step_period_ms",
    "moonpipe_step_idle_ms", "moonpipe_batch_size_mean", "moonpipe_pipeline_depth",
    "moonpipe_engine_ready", "moonpipe_prefix_cache_pages", "moonpipe_prefix_cache_entries",
    "moonpipe_prefix_cache_hits_total", "moonpipe_prefix_cache_misses_total",
)


def test_metrics_show_the_custom_families_with_plausible_values(
        triton_server: ServerHandle, moondream: Caller, sample_image_bytes: bytes) -> None:
    before = triton_server.metrics_text()
    replies = moondream.run("caption", sample_image_bytes, stream=True, max_tokens=8, temperature=0.0)
    final = replies[-1]
    assert final.error is None
    time.sleep(1.2)  # gauges are exported every stats_interval_ms (500)
    text = triton_server.metrics_text()

    for family in FAMILIES:
        assert f"# TYPE {family} " in text, family
    assert 'model="moondream"' in text
    # Triton's own metrics are still there
    assert "nv_inference_request_success" in text

    def delta(name: str, **labels: str) -> float:
        return metric_value(text, name, **labels) - metric_value(before, name, **labels)

    assert delta("moonpipe_requests_total", skill="caption", finish_reason=final.scalar("FINISH_REASON")) == 1
    assert delta("moonpipe_prompt_tokens_total") == final.scalar("NUM_INPUT_TOKENS")
    assert delta("moonpipe_generated_tokens_total") == final.scalar("NUM_OUTPUT_TOKENS")
    assert delta("moonpipe_time_to_first_token_seconds_count") == 1
    assert 0 < delta("moonpipe_time_to_first_token_seconds_sum") < 60
    assert delta("moonpipe_inter_token_latency_seconds_count") == 1
    assert metric_value(text, "moonpipe_kv_pages_total") > 0
    assert metric_value(text, "moonpipe_kv_pages_in_use") == 0  # nothing in flight now
    assert metric_value(text, "moonpipe_pipeline_depth") in (1, 2)
    assert metric_value(text, "moonpipe_step_period_ms") > 0
    assert metric_value(text, "moonpipe_step_idle_ms") >= 0


def test_server_log_has_one_line_per_request_with_timings(
        triton_server: ServerHandle, moondream: Caller, sample_image_bytes: bytes) -> None:
    moondream.run("query", sample_image_bytes, "Is there a ball?", max_tokens=4)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in triton_server.log_text().splitlines()
                 if "moonpipe request" in line and "skill=query" in line]
        if lines:
            break
        time.sleep(0.1)
    assert lines
    assert all(key in lines[-1] for key in ("finish=", "prompt_tokens=", "output_tokens=", "ttft_ms=",
                                            "itl_ms=", "total_ms="))


def test_a_repeated_image_is_a_prefix_cache_hit_in_the_metrics(
        triton_server: ServerHandle, moondream: Caller) -> None:
    from conftest import make_png

    image = make_png(97, 61)  # an image no other test sends
    counters = ("moonpipe_prefix_cache_misses_total", "moonpipe_prefix_cache_hits_total")

    def counts() -> tuple[float, ...]:
        text = triton_server.metrics_text()
        return tuple(metric_value(text, name) for name in counters)

    def settled() -> tuple[float, ...]:
        """The counters once two exports (stats_interval_ms: 500) agree."""
        last, deadline = counts(), time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.6)
            now = counts()
            if now == last:
                return now
            last = now
        raise AssertionError("the prefix-cache counters never settled")

    before = settled()
    for question in ("Is there a ball?", "What colour is it?"):
        assert moondream.run("query", image, question, max_tokens=3)[-1].error is None
    after = settled()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    text = triton_server.metrics_text()
    assert metric_value(text, "moonpipe_prefix_cache_entries") >= 1
    assert metric_value(text, "moonpipe_prefix_cache_pages") > 0
