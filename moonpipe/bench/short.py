"""``moonpipe bench short``: many short requests, like Moondream's published workload.

Moondream's end-to-end figures (background.md: moondream2 on an H100, ChartQA, short
direct answers) are requests/s and latency at batch 1 and at high concurrency. This
benchmark runs the same shape of load: each request is one image plus a short question
(``query``, at most ``max_tokens`` outputs; eos is banned so every answer has exactly that
many) or a ``point``/``detect`` request for one object; closed loop at each concurrency
level, once with every request on the same image and once with a distinct image per
request (every request pays the vision encoder and the prefix prefill: the cold-cache
case). On the same image, with the prefix cache on (the server's default), a request
after the first prefills only its prompt over the image's shared prefix KV; with it off
(``prefix_cache_size`` 0) it still skips the vision encoder (image-embedding cache) but
prefills the 730-position prefix again. By default every cell runs with the prefix cache
off and on, side by side in one run; requests stream, so each row has a TTFT summary
(first output) beside the latency summary (whole answer).

In-process by default (an :class:`~moonpipe.engine.Engine` over the fixed-length checkpoint);
``triton=True`` sends the same requests through tritonserver over gRPC (non-streaming calls,
as a client that wants one answer makes them).
"""

from __future__ import annotations

import contextlib
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from moonpipe.bench.common import build_bench_engine, device_name
from moonpipe.bench.latency import Trace, summarize
from moonpipe.bench.load import RequestSpec, jpeg_image, run_in_process, run_over_grpc
from moonpipe.bench.server import bench_model_repository, fixed_length_checkpoint, running_server
from moonpipe.config import EngineConfig
from moonpipe.engine import Engine

__all__ = ["SHORT_SKILLS", "cell_metrics", "format_short_table", "plot_short", "run_short_bench"]

SHORT_SKILLS = ("query", "point", "detect")
_PROMPTS = {"query": "What is the title of this chart?", "point": "the red ball", "detect": "the red ball"}

Runner = Callable[[Sequence[RequestSpec], int, str], list[Trace]]


PREFIX_CACHE_SIZE = 16  # the server's default (config.pbtxt) when the prefix cache is on
PREFIX_CACHE_CHOICES = {"both": (False, True), "off": (False,), "on": (True,)}


def cell_metrics(traces: Sequence[Trace]) -> dict[str, Any]:
    """Requests/s, latency and TTFT summaries of one cell (skill x images x concurrency)."""
    good = [t for t in traces if t.ok]
    wall = (max(t.end for t in good) - min(t.start for t in good)) if good else 0.0
    lat = summarize(t.latency for t in good)
    return {
        "requests": len(traces),
        "errors": len(traces) - len(good),
        "first_error": next((t.error for t in traces if t.error), ""),
        "wall_s": wall,
        "requests_per_s": len(good) / wall if wall > 0 else 0.0,
        "mean_output_tokens": sum(t.num_output_tokens for t in good) / len(good) if good else 0.0,
        "latency": asdict(lat),
        "ttft": asdict(summarize(t.ttft for t in good)),
    }


def _spec(skill: str, image: bytes, max_tokens: int) -> RequestSpec:
    """A streamed request (the first output marks its TTFT)."""
    if skill == "query":
        return RequestSpec("query", image, prompt=_PROMPTS[skill], max_tokens=max_tokens, temperature=0.0,
                           stream=True)
    return RequestSpec(skill, image, prompt=_PROMPTS[skill], max_objects=1, stream=True)


class _Images:
    """Distinct JPEGs on demand: a seed is never reused, so 'unique' never hits the cache."""

    def __init__(self) -> None:
        self._next_seed = 1  # seed 0 is the repeated image

    def fresh(self, n: int) -> list[bytes]:
        seeds = range(self._next_seed, self._next_seed + n)
        self._next_seed += n
        return [jpeg_image(s) for s in seeds]


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the requests run: in-process engine settings (or the server, ``triton``)."""

    model: str
    device: str
    dtype: str
    decode_kernels: str
    triton: bool
    prefix_cache: bool

    @property
    def prefix_cache_size(self) -> int:
        return PREFIX_CACHE_SIZE if self.prefix_cache else 0


@contextlib.contextmanager
def _runner(target: _Target, max_batch: int, log: Callable[[str], None],
            used: list[str]) -> Iterator[Runner]:
    if not target.triton and (target.device != "cpu" or target.model == "md2"):
        # random full-size weights made on the device (no multi-GB checkpoint file)
        engine = build_bench_engine(target.model, device=target.device, dtype=target.dtype, depth=2,
                                    max_batch_size=max_batch, cpu_worker="process",
                                    decode_kernels=target.decode_kernels,
                                    prefix_cache_size=target.prefix_cache_size)
        used.append(engine.runner.work.decoder.kind)
        try:
            yield lambda specs, n, tag: run_in_process(engine, specs, n, tag=tag)
        finally:
            engine.shutdown()
        return
    model, triton = target.model, target.triton
    with tempfile.TemporaryDirectory(prefix="moonpipe-bench-") as tmp:
        ckpt = fixed_length_checkpoint(Path(tmp) / "checkpoint", preset=model)
        if triton:
            params = {"device": "cpu", "dtype": "float32", "max_batch_size": str(max_batch),
                      "prefix_cache_size": str(target.prefix_cache_size)}
            repo = bench_model_repository(Path(tmp) / "model_repository", ckpt, params)
            t0 = time.perf_counter()
            with running_server(repo, ckpt) as server:
                url = server.urls.grpc
                log(f"  tritonserver ready at {url} ({time.perf_counter() - t0:.1f} s)")
                yield lambda specs, n, tag: run_over_grpc(url, specs, n)
            return
        engine = Engine(EngineConfig(checkpoint=str(ckpt), device="cpu", dtype="float32",
                                     max_batch_size=max_batch, pipeline_depth=2, cpu_worker="process",
                                     decode_kernels=target.decode_kernels,
                                     prefix_cache_size=target.prefix_cache_size))
        used.append(engine.runner.work.decoder.kind)
        try:
            yield lambda specs, n, tag: run_in_process(engine, specs, n, tag=tag)
        finally:
            engine.shutdown()


def run_short_bench(*, model: str, skills: Sequence[str], concurrency: Sequence[int], requests: int,
                    max_tokens: int, triton: bool, device: str = "cpu", dtype: str = "float32",
                    decode_kernels: str = "auto", prefix_cache: str = "both",
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (prefix cache, skill, images, concurrency) cell; returns the JSON document.

    ``prefix_cache``: ``both`` (each cell with the cache off, then on: one engine or server
    per setting, the same cells in the same order), ``off`` or ``on``.
    """
    repeated = jpeg_image(0)
    images = _Images()
    rows: list[dict[str, Any]] = []
    used: list[str] = []
    for cache in PREFIX_CACHE_CHOICES[prefix_cache]:
        target = _Target(model, device, dtype, decode_kernels, triton, cache)
        with _runner(target, max(concurrency), log, used) as run:
            for skill in skills:
                run([_spec(skill, repeated, max_tokens)] * 2, 1, f"warm-{skill}")  # warm-up; caches image 0
                for mode in ("repeated", "unique"):
                    for n in concurrency:
                        if mode == "repeated":
                            specs = [_spec(skill, repeated, max_tokens)] * requests
                        else:
                            specs = [_spec(skill, img, max_tokens) for img in images.fresh(requests)]
                        log(f"  prefix cache {'on ' if cache else 'off'} {skill:<6} {mode:<8} "
                            f"concurrency={n:>3}: {requests} requests ...")
                        row = {"skill": skill, "images": mode, "concurrency": n, "prefix_cache": cache,
                               **cell_metrics(run(specs, n, f"{skill}-{mode}-{n}-{int(cache)}"))}
                        rows.append(row)
                        log(format_row(row))
    return {
        "benchmark": "short",
        "path": "triton" if triton else "in_process",
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": model,
        "dtype": dtype,
        "decode_kernels": decode_kernels,
        "decode_kernels_used": used[0] if used else "server",
        "workload": (f"query: '{_PROMPTS['query']}' with {max_tokens} output tokens (eos banned); "
                     f"point/detect: one object; 640x480 JPEG; closed loop"),
        "requests_per_cell": requests,
        "prefix_cache_size": PREFIX_CACHE_SIZE,
        "rows": rows,
        "prefix_cache_effect": prefix_cache_effect(rows),
    }


def prefix_cache_effect(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every cell run with the cache off and on: on/off ratios of TTFT p50, latency p50
    and requests/s (issue 18's targets: repeated-image TTFT p50 at concurrency 1 at most
    half, requests/s at high concurrency at least 1.5x; unique images not slower)."""
    cells: dict[tuple[str, str, int], dict[bool, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["skill"], r["images"], r["concurrency"]), {})[r["prefix_cache"]] = r
    out = []
    for (skill, mode, n), pair in cells.items():
        if len(pair) != 2 or not pair[False]["requests_per_s"]:
            continue
        off, on = pair[False], pair[True]
        out.append({
            "skill": skill, "images": mode, "concurrency": n,
            "ttft_p50_on_over_off": _ratio(on["ttft"]["p50_ms"], off["ttft"]["p50_ms"]),
            "latency_p50_on_over_off": _ratio(on["latency"]["p50_ms"], off["latency"]["p50_ms"]),
            "requests_per_s_on_over_off": _ratio(on["requests_per_s"], off["requests_per_s"]),
        })
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


HEADER = (f"{'prefix':<6} {'skill':<6} {'images':<8} {'conc':>4} {'req/s':>7} {'ttft p50':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'tokens':>6} {'err':>4}")


def format_row(row: dict[str, Any]) -> str:
    lat, ttft = row["latency"], row.get("ttft", row["latency"])
    cache = "-" if "prefix_cache" not in row else ("on" if row["prefix_cache"] else "off")
    return (f"{cache:<6} {row['skill']:<6} {row['images']:<8} {row['concurrency']:>4} {row['requests_per_s']:>7.2f} "
            f"{ttft['p50_ms']:>9.1f} {lat['p50_ms']:>8.1f} {lat['p99_ms']:>8.1f} {row['mean_output_tokens']:>6.1f} "
            f"{row['errors']:>4}")


def format_short_table(doc: dict[str, Any]) -> str:
    kernels = f"  decode kernels: {doc['decode_kernels_used']}" if "decode_kernels_used" in doc else ""
    lines = [f"device: {doc['device']}  torch {doc['torch']}  model {doc['model']} ({doc['dtype']})  "
             f"path: {doc['path']}{kernels}", doc["workload"], HEADER]
    lines += [format_row(r) for r in doc["rows"]]
    effect = doc.get("prefix_cache_effect") or []
    if effect:
        lines.append("prefix cache on / off:  TTFT p50   latency p50   req/s")
        lines += [f"  {e['skill']:<6} {e['images']:<8} conc {e['concurrency']:>3}:  {e['ttft_p50_on_over_off']:>6.2f}x"
                  f"   {e['latency_p50_on_over_off']:>9.2f}x   {e['requests_per_s_on_over_off']:>5.2f}x" for e in effect]
    return "\n".join(lines)


def plot_short(doc: dict[str, Any], out: Path) -> Path:
    """Requests/s and p50/p99 latency per cell, grouped by skill and image mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    levels = sorted({r["concurrency"] for r in rows})
    groups = sorted({(r["skill"], r["images"], r.get("prefix_cache", True)) for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(groups), 1)
    for g, (skill, mode, cache) in enumerate(groups):
        cells = {r["concurrency"]: r for r in rows
                 if r["skill"] == skill and r["images"] == mode and r.get("prefix_cache", True) == cache}
        xs = [i + g * width for i in range(len(levels))]
        label = f"{skill}, {mode} images, prefix cache {'on' if cache else 'off'}"
        ax1.bar(xs, [cells[c]["requests_per_s"] if c in cells else 0.0 for c in levels], width, label=label)
        p50 = [cells[c]["latency"]["p50_ms"] if c in cells else 0.0 for c in levels]
        p99 = [cells[c]["latency"]["p99_ms"] if c in cells else 0.0 for c in levels]
        ax2.bar(xs, p50, width, label=label,
                yerr=[[0.0] * len(p50), [max(0.0, b - a) for a, b in zip(p50, p99, strict=True)]], capsize=3)
    for ax, title in ((ax1, "requests/s"), (ax2, "latency p50 ms (bar to p99)")):
        ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(levels))])
        ax.set_xticklabels([f"concurrency {c}" for c in levels])
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax2.set_yscale("log")
    fig.suptitle(f"moonpipe bench short ({doc['path']}): {doc['model']} ({doc['dtype']}) on {doc['device']}",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
