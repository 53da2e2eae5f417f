"""``moonpipe bench ...``: benchmark drivers (they print, save JSON + PNG; never tests)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["output_path", "register"]


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("stream counts must be positive")
    return values


def output_path(args: argparse.Namespace, name: str) -> Path:
    """Where a run saves its JSON: ``--json``, else ``bench/out/`` (untracked), or
    ``bench/results/`` (the committed results) with ``--update-results``."""
    from moonpipe.bench.common import LOCAL_RESULTS_DIR, RESULTS_DIR

    folder = RESULTS_DIR if args.update_results else LOCAL_RESULTS_DIR
    return Path(args.json) if args.json else folder / f"{name}.json"


def _output_options(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--json", type=Path, default=None,
                   help=f"output JSON path (default bench/out/{name}.json, untracked)")
    p.add_argument("--plot", type=Path, default=None, help="output PNG path (default: next to the JSON)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG (also skipped when matplotlib is missing)")
    p.add_argument("--update-results", action="store_true",
                   help="write into bench/results/, the committed results the docs show, instead of "
                        "the untracked bench/out/")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="run a benchmark (prints a table, saves JSON and a plot)")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    p = kinds.add_parser(
        "pipeline",
        help="blocking (depth 1) vs pipelined (depth 2) decode, the cost-model table",
        description="Runs the same greedy fixed-length workload through a depth-1 and a depth-2 "
        "engine back to back on random weights of the chosen preset and prints the "
        "cost-model table (columns defined in docs/bench.md).",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--model", default=None, choices=["tiny", "small", "md2"],
                   help="weights preset (default: tiny on cpu, md2 on cuda)")
    p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--streams", type=_ints, default=[1, 8, 32], help="comma-separated stream counts (default 1,8,32)")
    p.add_argument("--tokens", type=int, default=128, help="output tokens per request (default 128)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of `streams` requests per measurement (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per depth, alternating which goes first; medians are reported (default 5)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run eager on CUDA")
    p.add_argument("--cpu-worker", default="process", choices=["process", "thread"],
                   help="CPU compute worker: a process (its own interpreter and core, the default) "
                   "or a thread (shares the GIL with the scheduler: measures contention)")
    _add_kernels_option(p)
    _output_options(p, "pipeline-<device>-<model>[-thread]")
    p.set_defaults(func=_run_pipeline)
    _register_triton(kinds)
    _register_short(kinds)


def _add_kernels_option(p: argparse.ArgumentParser) -> None:
    from moonpipe.config import DECODE_KERNELS

    p.add_argument("--decode-kernels", default="auto", choices=DECODE_KERNELS,
                   help="decode step kernels: auto (default: the paged attention kernel on CUDA when it "
                   "passes its start-up check), torch, triton (attention kernel), fused (attention + "
                   "fused pointwise kernels). On CPU triton/fused need TRITON_INTERPRET=1 (slow)")


def _run_pipeline(args: argparse.Namespace) -> int:
    from moonpipe.bench.common import device_name, slug
    from moonpipe.bench.pipeline import format_table, run_pipeline_bench
    from moonpipe.bench.plot import plot_pipeline

    cuda = args.device.startswith("cuda")
    model = args.model or ("md2" if cuda else "tiny")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    worker = "none" if cuda else args.cpu_worker
    name = f"pipeline-{slug(device_name(args.device))}-{model}" + ("-thread" if worker == "thread" else "")
    out = output_path(args, name)
    t0 = time.perf_counter()
    print(f"moonpipe bench pipeline: {model} ({dtype}) on {device_name(args.device)}; "
          f"streams {args.streams}, {args.tokens} tokens x {args.rounds} rounds x {args.repeats} repeats"
          + ("" if cuda else f"; compute worker: {worker}"), flush=True)
    doc = run_pipeline_bench(device=args.device, model=model, dtype=dtype, streams=args.streams,
                             tokens=args.tokens, rounds=args.rounds, repeats=args.repeats,
                             cuda_graphs=not args.no_cuda_graphs, cpu_worker=worker if worker != "none" else "thread",
                             decode_kernels=args.decode_kernels, log=_progress)
    return _report(format_table(doc), doc, out, None if args.no_plot else plot_pipeline, args.plot, t0)


def _register_triton(kinds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = kinds.add_parser(
        "triton",
        help="in-process engine vs the real tritonserver over gRPC streaming (Triton overhead)",
        description="Runs the same streamed, fixed-length caption workload through an in-process "
        "Engine and through tritonserver (gRPC streaming, moonpipe_client.AsyncClient) in one "
        "run, and reports tokens/s, TTFT and inter-token latency p50/p90/p99 and their ratios.",
    )
    p.add_argument("--model", default="tiny", choices=["tiny", "small"], help="checkpoint preset (default tiny)")
    p.add_argument("--streams", type=_ints, default=[1, 8], help="comma-separated concurrency levels (default 1,8)")
    p.add_argument("--requests", type=int, default=16, help="requests per stream count and path (default 16)")
    p.add_argument("--tokens", type=int, default=32, help="output tokens per request (default 32)")
    p.add_argument("--rest", action="store_true",
                   help="also run every stream count through the REST gateway (moonpipe_gateway, Moondream "
                   "/v1/caption SSE) and report it against direct gRPC (default: off)")
    _output_options(p, "triton[-rest]-<device>-<model>")
    p.set_defaults(func=_run_triton)


def _run_triton(args: argparse.Namespace) -> int:
    from moonpipe.bench.common import device_name, slug
    from moonpipe.bench.triton import format_triton_table, plot_triton, run_triton_bench

    name = "triton-rest" if args.rest else "triton"
    out = output_path(args, f"{name}-{slug(device_name('cpu'))}-{args.model}")
    t0 = time.perf_counter()
    print(f"moonpipe bench triton: {args.model} on {device_name('cpu')}; streams {args.streams}, "
          f"{args.requests} requests x {args.tokens} tokens per stream count and path"
          + ("; paths in-process, gRPC, REST gateway" if args.rest else ""), flush=True)
    doc = run_triton_bench(model=args.model, streams=args.streams, requests=args.requests, tokens=args.tokens,
                           rest=args.rest, log=_progress)
    return _report(format_triton_table(doc), doc, out, None if args.no_plot else plot_triton, args.plot, t0)


def _register_short(kinds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = kinds.add_parser(
        "short",
        help="many short requests (query / point) at concurrency 1 and 16, repeated vs unique images",
        description="A workload like Moondream's published one: one image + a short question "
        "(a few output tokens) or a point request, at batch 1 and at high concurrency, with every "
        "request on the same image (image-embedding cache hits) and on distinct images. Reports "
        "requests/s and latency p50/p99. In-process by default; --triton goes through the server.",
    )
    p.add_argument("--model", default="tiny", choices=["tiny", "small", "md2"],
                   help="weights preset (default tiny; md2 = random full-size weights in memory, for a GPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu; in-process only)")
    p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: float32 on cpu, bfloat16 on cuda)")
    _add_kernels_option(p)
    p.add_argument("--concurrency", type=_ints, default=[1, 16], help="comma-separated concurrency levels (default 1,16)")
    p.add_argument("--requests", type=int, default=16, help="requests per cell (default 16)")
    p.add_argument("--skills", default="query,point", help="comma-separated: query, point, detect (default query,point)")
    p.add_argument("--max-tokens", type=int, default=4, help="max output tokens of a query (default 4)")
    p.add_argument("--triton", action="store_true", help="send the requests through tritonserver over gRPC")
    p.add_argument("--prefix-cache", default="both", choices=["both", "off", "on"],
                   help="run every cell with the prefix cache off and on side by side (default both), "
                   "or only one way")
    _output_options(p, "short-<path>-<device>-<model>")
    p.set_defaults(func=_run_short)


def _run_short(args: argparse.Namespace) -> int:
    from moonpipe.bench.common import device_name, slug
    from moonpipe.bench.short import SHORT_SKILLS, format_short_table, plot_short, run_short_bench

    skills = [s.strip() for s in args.skills.split(",") if s.strip()]
    bad = [s for s in skills if s not in SHORT_SKILLS]
    if bad or not skills:
        raise SystemExit(f"moonpipe bench short: --skills must name some of {', '.join(SHORT_SKILLS)}")
    if args.triton and (args.device != "cpu" or args.model == "md2"):
        raise SystemExit("moonpipe bench short: --triton runs the tiny/small checkpoints on CPU only")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    path = "triton" if args.triton else "inproc"
    out = output_path(args, f"short-{path}-{slug(device_name(args.device))}-{args.model}")
    t0 = time.perf_counter()
    print(f"moonpipe bench short ({'tritonserver over gRPC' if args.triton else 'in-process'}): {args.model} "
          f"({dtype}) on {device_name(args.device)}; skills {skills}, concurrency {args.concurrency}, "
          f"{args.requests} requests per cell", flush=True)
    doc = run_short_bench(model=args.model, skills=skills, concurrency=args.concurrency, requests=args.requests,
                          max_tokens=args.max_tokens, triton=args.triton, device=args.device, dtype=dtype,
                          decode_kernels=args.decode_kernels, prefix_cache=args.prefix_cache, log=_progress)
    _report(format_short_table(doc), doc, out, None if args.no_plot else plot_short, args.plot, t0)
    failed = sum(row["errors"] for row in doc["rows"])
    if failed:
        first = next(row["first_error"] for row in doc["rows"] if row["errors"])
        print(f"moonpipe bench short: {failed} requests failed; first error: {first}", file=sys.stderr)
    return 1 if failed else 0


def _progress(message: str) -> None:
    """Progress lines go to stderr so stdout carries only the table."""
    print(message, file=sys.stderr, flush=True)


def _report(table: str, doc: dict[str, Any], out: Path,
            plot: Callable[[dict[str, Any], Path], Path] | None, plot_path: Path | None, t0: float) -> int:
    """Print the table, save the JSON and the plot (next to the JSON unless given; none
    with --no-plot or without matplotlib, as on a bare GPU machine)."""
    from moonpipe.bench.pipeline import save

    print(table)
    save(doc, out)
    saved = str(out)
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        print("no plot: matplotlib is not installed", file=sys.stderr)
    elif plot is not None:
        saved += f" and {plot(doc, plot_path or out.with_suffix('.png'))}"
    print(f"saved {saved} ({time.perf_counter() - t0:.0f} s)")
    return 0
