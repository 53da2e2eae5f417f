"""The moondream adapter's custom Prometheus metrics (served on Triton's metrics port).

The metric families are kept alive on the ``Metrics`` object: Triton drops a family
whose Python object is collected (see docs/triton-local.md).
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from moonpipe.engine import EngineStats
from moonpipe.request import Result

__all__ = ["Metrics"]

_TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28]

# (EngineStats field, family name, help): the engine gauges exported every stats interval
_GAUGES = (
    ("queue_depth", "moonpipe_queue_depth", "Requests waiting for admission"),
    ("running", "moonpipe_running_sequences", "Sequences being decoded"),
    ("zombies", "moonpipe_zombie_sequences", "Finished sequences whose pages wait for in-flight steps"),
    ("kv_pages_in_use", "moonpipe_kv_pages_in_use", "KV-cache pages in use"),
    ("kv_pages_total", "moonpipe_kv_pages_total", "KV-cache pages in the pool"),
    ("period_ms", "moonpipe_step_period_ms", "Recent mean time between decode steps"),
    ("idle_ms", "moonpipe_step_idle_ms", "Recent mean device idle time per step (the bubble)"),
    ("batch_size_mean", "moonpipe_batch_size_mean", "Recent mean decode batch size"),
    ("pipeline_depth", "moonpipe_pipeline_depth", "Steps in flight (1 blocking, 2 pipelined)"),
    ("ready", "moonpipe_engine_ready", "1 while the engine accepts requests, 0 after a crash or at shutdown"),
    ("prefix_cache_pages", "moonpipe_prefix_cache_pages", "KV pages held only by the prefix cache (freed on demand)"),
    ("prefix_cache_entries", "moonpipe_prefix_cache_entries", "Images whose prefix KV is cached"),
)
# (EngineStats field, family name, help): cumulative engine counts exported as counters
_COUNTERS = (
    ("prefix_cache_hits", "moonpipe_prefix_cache_hits_total", "Requests admitted onto a cached image prefix"),
    ("prefix_cache_misses", "moonpipe_prefix_cache_misses_total", "Requests that computed their image prefix (cache on)"),
)


class Metrics:
    """Request counters and latency histograms, plus the engine's gauges."""

    def __init__(self, model: str) -> None:
        f = pb_utils.MetricFamily
        self.labels = {"model": model}
        self._requests = f("moonpipe_requests_total", "Requests finished, by skill and finish reason", f.COUNTER)
        self._families: list[Any] = [self._requests]
        self._by_key: dict[tuple[str, str], Any] = {}

        def metric(name: str, help_text: str, kind: Any, **kw: Any) -> Any:
            family = f(name, help_text, kind)
            self._families.append(family)
            return family.Metric(labels=self.labels, **kw)

        self.prompt = metric("moonpipe_prompt_tokens_total", "Prompt tokens of finished requests", f.COUNTER)
        self.generated = metric("moonpipe_generated_tokens_total", "Tokens generated for finished requests", f.COUNTER)
        self.ttft = metric("moonpipe_time_to_first_token_seconds", "Time from execute to the first output",
                           f.HISTOGRAM, buckets=_TTFT_BUCKETS)
        self.itl = metric("moonpipe_inter_token_latency_seconds", "Mean time between outputs, per request",
                          f.HISTOGRAM, buckets=_ITL_BUCKETS)
        self.gauges = {field: metric(name, help_text, f.GAUGE) for field, name, help_text in _GAUGES}
        self.counters = {field: metric(name, help_text, f.COUNTER) for field, name, help_text in _COUNTERS}
        self._counted = dict.fromkeys(self.counters, 0)

    def count_request(self, skill: str, finish_reason: str) -> None:
        key = (skill, finish_reason)
        counter = self._by_key.get(key)
        if counter is None:
            labels = {**self.labels, "skill": skill, "finish_reason": finish_reason}
            counter = self._by_key[key] = self._requests.Metric(labels=labels)
        counter.increment(1)

    def record_result(self, skill: str, result: Result) -> tuple[float, float, float]:
        """Count a finished request; returns its (ttft, mean inter-token gap, total) seconds."""
        self.count_request(skill, result.finish_reason)
        self.prompt.increment(result.num_input_tokens)
        self.generated.increment(result.num_output_tokens)
        t = result.timings
        ttft = itl = total = 0.0
        if t is not None:
            ttft = t.ttft
            total = max(0.0, t.finished - t.submitted) if t.finished else 0.0
            if t.first_output:
                self.ttft.observe(ttft)
            if len(t.output_times) >= 2:
                itl = (t.output_times[-1] - t.output_times[0]) / (len(t.output_times) - 1)
                self.itl.observe(itl)
        return ttft, itl, total

    def export_stats(self, stats: EngineStats) -> None:
        for name, gauge in self.gauges.items():
            gauge.set(float(getattr(stats, name)))
        for name, counter in self.counters.items():
            total = int(getattr(stats, name))
            if total > self._counted[name]:
                counter.increment(total - self._counted[name])
                self._counted[name] = total
