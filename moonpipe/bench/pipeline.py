"""``moonpipe bench pipeline``: blocking (depth 1) vs pipelined (depth 2), side by side.

For each stream count the same greedy requests run through a depth-1 engine and a
depth-2 engine built on the same in-memory model, back to back (alternating which goes
first), ``repeats`` times; the
medians fill the cost-model table of shared/docs/background.md with the columns and JSON
schema of shared/docs/measuring.md. Greedy outputs of both depths are compared too.

Workload: ``streams`` concurrent caption requests of ``tokens`` outputs each, all submitted
together per round (so after one prefill step the run is pure decode), ``rounds`` rounds.
"""

from __future__ import annotations

import json
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from moonpipe.bench.common import bench_image, bench_model, build_bench_engine, device_name
from moonpipe.config import EngineConfig
from moonpipe.engine import Engine
from moonpipe.errors import EngineError
from moonpipe.request import Delta, Request, Result

__all__ = ["PipelineRow", "run_pipeline_bench"]


@dataclass(frozen=True, slots=True)
class DepthRun:
    """One depth's measurement on one workload."""

    forward_ms: float
    sampling_ms: float
    period_ms: float
    tokens_per_s: float
    L: float
    zombie_tax: float
    outputs: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class PipelineRow:
    """One row of the table (see measuring.md for every column)."""

    streams: int
    forward_ms: float
    sampling_ms: float
    period_ms: float
    idle_ms: float
    blocking_ms: float
    blocking_forward_ms: float
    blocking_sampling_ms: float
    L: float
    zombie_tax: float
    predicted: float
    observed: float
    hidden: float
    tokens_per_s: float
    blocking_tokens_per_s: float
    identical_outputs: bool


class _Sink:
    def __init__(self, n: int) -> None:
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.results: dict[str, Result] = {}
        self.errors: list[str] = []

    def on_delta(self, request_id: str, delta: Delta) -> None:
        pass

    def _one(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.done.set()

    def on_result(self, request_id: str, result: Result) -> None:
        self.results[request_id] = result
        self._one()

    def on_error(self, request_id: str, error: EngineError) -> None:
        self.errors.append(f"{request_id}: {error}")
        self._one()


def _run_round(engine: Engine, streams: int, tokens: int, image: bytes, tag: str) -> dict[str, Result]:
    sink = _Sink(streams)
    for i in range(streams):
        engine.submit(Request(f"{tag}-{i}", "caption", image, length="normal", max_tokens=tokens,
                              temperature=0.0), sink)
    if not sink.done.wait(600):
        raise RuntimeError("benchmark round timed out")
    if sink.errors:
        raise RuntimeError("benchmark requests failed: " + "; ".join(sink.errors[:3]))
    return sink.results


def _measure(engine: Engine, streams: int, tokens: int, rounds: int, image: bytes) -> DepthRun:
    _run_round(engine, streams, tokens, image, "warm")  # warm-up (allocations, caches)
    engine.reset_step_totals()
    t0 = time.perf_counter()
    outputs: list[tuple[int, ...]] = []
    generated = 0
    for r in range(rounds):
        res = _run_round(engine, streams, tokens, image, f"r{r}")
        for i in range(streams):
            ids = res[f"r{r}-{i}"].token_ids
            outputs.append(ids)
            generated += res[f"r{r}-{i}"].num_output_tokens
    wall = time.perf_counter() - t0
    tot = engine.reset_step_totals()
    steps = max(tot.decode_steps, 1)
    # forward and sampling over the same steady-state steps as the period (a ramp-up step
    # has a smaller batch and a shorter forward but closes no period interval)
    if tot.periods:
        fwd, samp = tot.period_forward_ms / tot.periods, tot.period_sampling_ms / tot.periods
    else:
        fwd, samp = tot.forward_ms / steps, tot.sampling_ms / steps
    return DepthRun(
        forward_ms=fwd,
        sampling_ms=samp,
        period_ms=tot.period_ms / max(tot.periods, 1),
        tokens_per_s=generated / wall,
        L=generated / (rounds * streams),
        zombie_tax=tot.all_zombie_steps / steps,
        outputs=tuple(outputs),
    )


def _median_run(runs: list[DepthRun]) -> DepthRun:
    def med(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in runs))

    return DepthRun(med("forward_ms"), med("sampling_ms"), med("period_ms"), med("tokens_per_s"),
                    med("L"), med("zombie_tax"), runs[0].outputs)


def _predicted(blk: DepthRun, pip: DepthRun) -> float:
    """measuring.md: (blocking / pipelined period) x (1 - z) - 1."""
    return (blk.period_ms / pip.period_ms) * (1.0 - pip.zombie_tax) - 1.0


def _hidden(blk: DepthRun, pip: DepthRun) -> float:
    """measuring.md: (blocking - pipelined) / (blocking - forward - sampling), depth-1 parts."""
    book = blk.period_ms - blk.forward_ms - blk.sampling_ms
    return (blk.period_ms - pip.period_ms) / book if book > 0 else 0.0


def run_pipeline_bench(*, device: str, model: str, dtype: str, streams: list[int], tokens: int,
                       rounds: int, repeats: int, cuda_graphs: bool, cpu_worker: str = "process",
                       decode_kernels: str = "auto", log: Any = print) -> dict[str, Any]:
    """Run the whole table; returns the JSON document (measuring.md schema)."""
    image = bench_image()
    max_streams = max(streams)
    engines = {
        depth: build_bench_engine(model, device=device, dtype=dtype, depth=depth,
                                  max_batch_size=max_streams, cuda_graphs=cuda_graphs, cpu_worker=cpu_worker,
                                  decode_kernels=decode_kernels)
        for depth in (1, 2)
    }
    used = engines[2].runner.work.decoder.kind
    kernels = _kernels_per_step(model, device, dtype, used)
    log(f"  decode kernels: {used}; kernels per decode step: {kernels['total']} "
        f"(forward {kernels['forward']}, sampling {kernels['sampling']}"
        + (f"; CUDA profiler: {kernels['cuda_kernels']} in the forward" if kernels["cuda_kernels"] else "") + ")")
    rows: list[PipelineRow] = []
    try:
        for n in streams:
            runs: dict[int, list[DepthRun]] = {1: [], 2: []}
            for rep in range(repeats):
                for depth in ((1, 2) if rep % 2 == 0 else (2, 1)):  # ABBA: drift cancels
                    log(f"  streams={n:>3} repeat {rep + 1}/{repeats} depth {depth} ...")
                    runs[depth].append(_measure(engines[depth], n, tokens, rounds, image))
            blk, pip = _median_run(runs[1]), _median_run(runs[2])
            # Speedups and the hidden share are medians of per-repeat ratios: each repeat's
            # depth-1 and depth-2 runs ran back to back, so a slow drift of the machine
            # cancels within a pair instead of landing on one side of a ratio of medians.
            pairs = list(zip(runs[1], runs[2], strict=True))
            rows.append(PipelineRow(
                streams=n,
                forward_ms=pip.forward_ms,
                sampling_ms=pip.sampling_ms,
                period_ms=pip.period_ms,
                idle_ms=max(0.0, pip.period_ms - pip.forward_ms - pip.sampling_ms),
                blocking_ms=blk.period_ms,
                blocking_forward_ms=blk.forward_ms,
                blocking_sampling_ms=blk.sampling_ms,
                L=pip.L,
                zombie_tax=pip.zombie_tax,
                predicted=statistics.median(_predicted(b, p) for b, p in pairs),
                observed=statistics.median(p.tokens_per_s / b.tokens_per_s - 1.0 for b, p in pairs),
                hidden=statistics.median(_hidden(b, p) for b, p in pairs),
                tokens_per_s=pip.tokens_per_s,
                blocking_tokens_per_s=blk.tokens_per_s,
                identical_outputs=all(b.outputs == p.outputs == runs[1][0].outputs for b, p in pairs),
            ))
            log(format_row(rows[-1]))
    finally:
        for eng in engines.values():
            eng.shutdown()
    return {
        "benchmark": "pipeline",
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": model,
        "dtype": dtype,
        "tokens_per_request": tokens,
        "rounds": rounds,
        "repeats": repeats,
        "cuda_graphs": cuda_graphs,
        "cpu_worker": cpu_worker if device == "cpu" else None,
        "decode_kernels": decode_kernels,
        "prefix_cache_size": 0,  # off: every stream asks about one image; the decode pipeline is measured
        "decode_kernels_used": used,
        "kernels_per_step": kernels,
        "estimator": "columns in ms: medians over repeats; predicted, observed, hidden: medians "
                     "of per-repeat (depth 1, depth 2) pair values",
        "rows": [asdict(r) for r in rows],
    }


def _kernels_per_step(model: str, device: str, dtype: str, kind: str) -> dict[str, Any]:
    """Kernels of one decode step (batch 1, 800 positions) of the engines' decode path."""
    from moonpipe.kernels.count import count_step

    weights, model_cfg, _ = bench_model(model, device, dtype)
    return count_step(weights, model_cfg, EngineConfig(device=device, dtype=dtype, decode_kernels=kind))


HEADER = (f"{'streams':>7} {'fwd ms':>8} {'samp ms':>8} {'period':>8} {'idle':>7} {'blocking':>9} "
          f"{'L':>6} {'z':>6} {'pred':>7} {'obs':>7} {'hidden':>7} {'same':>5}")


def format_row(r: PipelineRow) -> str:
    return (f"{r.streams:>7} {r.forward_ms:>8.3f} {r.sampling_ms:>8.3f} {r.period_ms:>8.3f} "
            f"{r.idle_ms:>7.3f} {r.blocking_ms:>9.3f} {r.L:>6.1f} {r.zombie_tax:>6.3f} "
            f"{r.predicted:>+7.1%} {r.observed:>+7.1%} {r.hidden:>7.0%} {'yes' if r.identical_outputs else 'NO':>5}")


def format_table(doc: dict[str, Any]) -> str:
    worker = f"  compute worker: {doc['cpu_worker']}" if doc.get("cpu_worker") else ""
    lines = [f"device: {doc['device']}  torch {doc['torch']}  model {doc['model']} ({doc['dtype']}){worker}"]
    kernels = doc.get("kernels_per_step")
    if kernels:
        cuda = f", CUDA profiler {kernels['cuda_kernels']} in the forward" if kernels.get("cuda_kernels") else ""
        lines.append(f"decode kernels: {doc['decode_kernels_used']}  kernels per step: {kernels['total']} "
                     f"(forward {kernels['forward']} + sampling {kernels['sampling']}{cuda})")
    lines.append(HEADER)
    lines += [format_row(PipelineRow(**row)) for row in doc["rows"]]
    return "\n".join(lines)


def save(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
