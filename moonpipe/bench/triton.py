"""``moonpipe bench triton``: the same streamed workload in-process and through tritonserver.

One process, one run: a fixed-length checkpoint (eos banned, see
:mod:`moonpipe.bench.server`) is loaded by an in-process :class:`~moonpipe.engine.Engine`
and by the real tritonserver (Python backend, the project's model repository with the
same engine settings). For each stream count the same streamed caption requests run
in-process and then over gRPC streaming (``moonpipe_client.AsyncClient``), closed loop
with ``streams`` requests in flight. Reported per path: generated tokens/s, requests/s,
TTFT, inter-token latency (per request, see :mod:`moonpipe.bench.latency`) and the gaps
between streamed chunks; and the Triton/in-process ratios from the same run.

With ``rest=True`` (``--rest``) a third path goes through the REST gateway
(``moonpipe_gateway``, its own process, in front of the same tritonserver): the same
streamed captions as Moondream ``/v1/caption`` SSE requests (:mod:`moonpipe.bench.rest`),
reported against the direct gRPC path of the same run.

All paths run on the same cores: over gRPC the client, tritonserver and the stub share
them (and the gateway, on the REST path), so on a 2-core machine the ratios include the
clients' own CPU.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from moonpipe.bench.common import device_name
from moonpipe.bench.latency import Trace, trace_summaries
from moonpipe.bench.load import RequestSpec, jpeg_image, run_in_process, run_over_grpc
from moonpipe.bench.rest import run_over_rest, running_gateway
from moonpipe.bench.server import bench_model_repository, fixed_length_checkpoint, running_server
from moonpipe.config import EngineConfig
from moonpipe.engine import Engine

__all__ = ["format_triton_table", "path_metrics", "plot_triton", "run_triton_bench"]


def path_metrics(traces: Sequence[Trace]) -> dict[str, Any]:
    """Throughput and latency summaries of one path's run (the JSON block per path)."""
    good = [t for t in traces if t.ok]
    wall = (max(t.end for t in good) - min(t.start for t in good)) if good else 0.0
    tokens = sum(t.num_output_tokens for t in good)
    sums = trace_summaries(traces)
    return {
        "requests": len(traces),
        "errors": len(traces) - len(good),
        "first_error": next((t.error for t in traces if t.error), ""),
        "wall_s": wall,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "requests_per_s": len(good) / wall if wall > 0 else 0.0,
        "L": tokens / len(good) if good else 0.0,
        "chunks_per_request": statistics.fmean(len(t.chunk_times) for t in good) if good else 0.0,
        **{name: asdict(s) for name, s in sums.items()},
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def run_triton_bench(*, model: str, streams: Sequence[int], requests: int, tokens: int, rest: bool = False,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every path at every stream count; returns the JSON document."""
    max_streams = max(streams)
    image = jpeg_image(0)
    params = {"device": "cpu", "dtype": "float32", "max_batch_size": str(max_streams), "pipeline_depth": "2",
              "cpu_worker": "process"}
    rows: list[dict[str, Any]] = []

    def specs(n: int) -> list[RequestSpec]:
        return [RequestSpec("caption", image, length="normal", max_tokens=tokens, temperature=0.0,
                            stream=True)] * n

    with tempfile.TemporaryDirectory(prefix="moonpipe-bench-") as tmp:
        t0 = time.perf_counter()
        ckpt = fixed_length_checkpoint(Path(tmp) / "checkpoint", preset=model)
        repo = bench_model_repository(Path(tmp) / "model_repository", ckpt, params)
        log(f"  fixed-length {model} checkpoint and model repository ready ({time.perf_counter() - t0:.1f} s)")
        engine = Engine(EngineConfig(checkpoint=str(ckpt), device="cpu", dtype="float32",
                                     max_batch_size=max_streams, pipeline_depth=2, cpu_worker="process"))
        try:
            t0 = time.perf_counter()
            with running_server(repo, ckpt) as server, contextlib.ExitStack() as stack:
                url = server.urls.grpc
                gateway = stack.enter_context(running_gateway(url, Path(tmp) / "gateway.log")) if rest else None
                log(f"  tritonserver ready at {url} ({time.perf_counter() - t0:.1f} s)"
                    + (f", gateway at {gateway.url}" if gateway else "") + "; warming up every path")
                run_in_process(engine, specs(max_streams), max_streams, tag="warm")
                run_over_grpc(url, specs(max_streams), max_streams)
                if gateway:
                    run_over_rest(gateway.url, specs(max_streams), max_streams)
                for n in streams:
                    log(f"  streams={n:>3}: {requests} requests in-process ...")
                    local = path_metrics(run_in_process(engine, specs(requests), n, tag=f"s{n}"))
                    log(f"  streams={n:>3}: {requests} requests over gRPC ...")
                    remote = path_metrics(run_over_grpc(url, specs(requests), n))
                    rows.append({
                        "streams": n,
                        "in_process": local,
                        "triton": remote,
                        "tokens_per_s_ratio": _ratio(remote["tokens_per_s"], local["tokens_per_s"]),
                        "ttft_p50_ratio": _ratio(remote["ttft"]["p50_ms"], local["ttft"]["p50_ms"]),
                        "itl_p50_ratio": _ratio(remote["itl"]["p50_ms"], local["itl"]["p50_ms"]),
                    })
                    if gateway:
                        log(f"  streams={n:>3}: {requests} requests through the REST gateway ...")
                        cpu_before = gateway.cpu_seconds()
                        traces = run_over_rest(gateway.url, specs(requests), n)
                        cpu_after = gateway.cpu_seconds()
                        cpu_s = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
                        rows[-1].update(_gateway_metrics(traces, remote, cpu_s))
                    log(format_row(rows[-1]))
        finally:
            engine.shutdown()
    return {
        "benchmark": "triton",
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": model,
        "dtype": "float32",
        "workload": f"streamed caption, {tokens} tokens (eos banned), same image, closed loop",
        "paths": ["in_process", "triton", *(["gateway"] if rest else [])],
        "tokens_per_request": tokens,
        "requests": requests,
        "rows": rows,
    }


def _gateway_metrics(traces: Sequence[Trace], grpc: dict[str, Any], cpu_s: float | None = None) -> dict[str, Any]:
    """The REST path's block of a row, its ratios to the direct gRPC path and the gateway
    process's CPU per generated token (``cpu_s``: its CPU seconds over the run)."""
    gateway = path_metrics(traces)
    tokens = gateway["generated_tokens"]
    return {
        "gateway": gateway,
        "gateway_cpu_us_per_token": 1e6 * cpu_s / tokens if cpu_s is not None and tokens else None,
        "gateway_tokens_per_s_ratio": _ratio(gateway["tokens_per_s"], grpc["tokens_per_s"]),
        "gateway_ttft_p50_ratio": _ratio(gateway["ttft"]["p50_ms"], grpc["ttft"]["p50_ms"]),
        "gateway_itl_p50_ratio": _ratio(gateway["itl"]["p50_ms"], grpc["itl"]["p50_ms"]),
    }


HEADER = (f"{'streams':>7} {'path':>10} {'tok/s':>8} {'req/s':>6} {'TTFT p50':>9} {'p90':>7} {'p99':>7} "
          f"{'ITL p50':>8} {'p90':>6} {'p99':>6} {'chunks':>6} {'err':>4}")


def _path_line(streams: int, name: str, m: dict[str, Any]) -> str:
    t, i = m["ttft"], m["itl"]
    return (f"{streams:>7} {name:>10} {m['tokens_per_s']:>8.1f} {m['requests_per_s']:>6.2f} "
            f"{t['p50_ms']:>9.1f} {t['p90_ms']:>7.1f} {t['p99_ms']:>7.1f} "
            f"{i['p50_ms']:>8.2f} {i['p90_ms']:>6.2f} {i['p99_ms']:>6.2f} "
            f"{m['chunks_per_request']:>6.1f} {m['errors']:>4}")


def _ratio_line(n: int, row: dict[str, Any], prefix: str, what: str) -> str:
    return (f"{n:>7} {'ratio':>10} {row[prefix + 'tokens_per_s_ratio']:>8.2f}x{'':>7} "
            f"{row[prefix + 'ttft_p50_ratio']:>8.2f}x{'':>16}{row[prefix + 'itl_p50_ratio']:>7.2f}x   ({what})")


def format_row(row: dict[str, Any]) -> str:
    n = row["streams"]
    lines = [_path_line(n, "in-process", row["in_process"]), _path_line(n, "triton", row["triton"]),
             _ratio_line(n, row, "", "triton / in-process")]
    if "gateway" in row:
        cpu = row.get("gateway_cpu_us_per_token")
        what = "gateway / triton" + (f"; gateway CPU {cpu:.0f} us/token" if cpu is not None else "")
        lines += [_path_line(n, "gateway", row["gateway"]), _ratio_line(n, row, "gateway_", what)]
    return "\n".join(lines)


def format_triton_table(doc: dict[str, Any]) -> str:
    lines = [f"device: {doc['device']}  torch {doc['torch']}  model {doc['model']} ({doc['dtype']})  "
             f"{doc['workload']}", "TTFT and ITL in ms", HEADER]
    lines += [format_row(r) for r in doc["rows"]]
    return "\n".join(lines)


def plot_triton(doc: dict[str, Any], out: Path) -> Path:
    """Tokens/s, TTFT and ITL (p50 with p99 whiskers) vs streams, in-process vs Triton."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    streams = [r["streams"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    paths = [("in_process", "in-process"), ("triton", "Triton gRPC streaming")]
    if rows and "gateway" in rows[0]:
        paths.append(("gateway", "REST gateway (SSE)"))
    for key, label in paths:
        axes[0].plot(streams, [r[key]["tokens_per_s"] for r in rows], "o-", label=label)
        for ax, metric in ((axes[1], "ttft"), (axes[2], "itl")):
            p50 = [r[key][metric]["p50_ms"] for r in rows]
            p99 = [r[key][metric]["p99_ms"] for r in rows]
            ax.errorbar(streams, p50, yerr=[[0.0] * len(p50), [b - a for a, b in zip(p50, p99, strict=True)]],
                        fmt="o-", capsize=3, label=f"{label} (p50, bar to p99)")
    titles = ("generated tokens/s", "time to first token (ms)", "inter-token latency (ms)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"moonpipe bench triton: {doc['model']} ({doc['dtype']}) on {doc['device']}, "
                 f"{doc['tokens_per_request']} tokens/request", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
