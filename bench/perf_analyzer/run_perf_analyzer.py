#!/usr/bin/env python
"""Run perf_analyzer against moonpipe's tritonserver: gRPC ``--streaming``, a concurrency sweep.

    .venv/bin/python bench/perf_analyzer/run_perf_analyzer.py            # full: long windows, stable on 2 cores
    .venv/bin/python bench/perf_analyzer/run_perf_analyzer.py --quick    # smoke: short windows, ~1 min
    .venv/bin/python bench/perf_analyzer/run_perf_analyzer.py --url 127.0.0.1:8001 --skills caption,point

Steps: install perf_analyzer (tritonclient 2.51.0 wheel) and its two libraries under
``.tools/`` once; write the per-skill input JSON (``bench/perf_analyzer/inputs/``) if
missing; unless ``--url`` is given, start tritonserver on free loopback ports over a copy
of ``model_repository/`` with a fixed-length tiny checkpoint (eos banned, so a caption is
always ``MAX_TOKENS`` tokens); run perf_analyzer once per skill with
``--profile-export-file``; derive TTFT and inter-token latency from the export. The raw
exports (large: they echo every input) go to ``--exports`` (default ``build/perf_analyzer/``,
git-ignored) with perf_analyzer's own log; the derived table goes to
``--out`` (default ``bench/out/perf_analyzer-summary.json``, untracked; with
``--update-results`` ``bench/results/``, the committed results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from moonpipe.bench.perf_analyzer import (  # noqa: E402
    SKILL_INPUTS,
    format_summaries,
    input_data,
    install,
    load_export,
    summarize_export,
)


def _levels(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return sorted(set(values))


def write_inputs(folder: Path, force: bool = False) -> dict[str, Path]:
    """One input JSON per skill on the sample picture (a red ball on a table), PNG-encoded."""
    from moonpipe.commands.serve import write_sample_image

    folder.mkdir(parents=True, exist_ok=True)
    files = {skill: folder / f"{skill}.json" for skill in SKILL_INPUTS}
    if force or not all(p.exists() for p in files.values()):
        with tempfile.TemporaryDirectory() as tmp:
            image = write_sample_image(Path(tmp) / "sample.png").read_bytes()
        for skill, path in files.items():
            path.write_text(json.dumps(input_data(skill, image), indent=1) + "\n")
    return files


def run_one(binary: Path, libs: Path, url: str, skill: str, data: Path, levels: list[int],
            export: Path, args: argparse.Namespace) -> int:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    step = levels[1] - levels[0] if len(levels) > 1 else 1
    arithmetic = all(b - a == step for a, b in itertools.pairwise(levels))
    if not arithmetic:
        raise SystemExit(f"--concurrency {levels}: perf_analyzer needs an arithmetic sweep (start:end:step)")
    cmd = [str(binary), "-m", "moondream", "-i", "grpc", "-u", url, "--streaming",
           "--input-data", str(data), f"--concurrency-range={levels[0]}:{levels[-1]}:{step}",
           "--measurement-interval", str(args.measurement_interval),
           "--max-trials", str(args.max_trials), "--stability-percentage", str(args.stability_percentage),
           "--profile-export-file", str(export)]
    print("$ " + " ".join(cmd), flush=True)
    log = export.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.run(cmd, env=env, timeout=args.timeout, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    # perf_analyzer's own summary (its "latency" is the whole request's, despite its banner)
    tail = text[text.find("Request concurrency"):] if "Request concurrency" in text else text[-3000:]
    print(tail.rstrip(), flush=True)
    return proc.returncode


def summary_path(out: Path | None, update: bool) -> Path:
    """Where the summary goes: ``--out``, else the untracked or (``update``) committed folder."""
    from moonpipe.bench.common import LOCAL_RESULTS_DIR, RESULTS_DIR

    return out or ROOT / (RESULTS_DIR if update else LOCAL_RESULTS_DIR) / "perf_analyzer-summary.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="", help="a running server's gRPC host:port (default: start one)")
    ap.add_argument("--skills", default="caption", help=f"comma-separated, of {', '.join(SKILL_INPUTS)}")
    ap.add_argument("--concurrency", type=_levels, default=[1, 4], help="arithmetic sweep, e.g. 1,4 or 1,2,3,4")
    ap.add_argument("--measurement-interval", type=int, default=4000, help="ms per window (default 4000)")
    ap.add_argument("--max-trials", type=int, default=10, help="windows before giving up on stability")
    ap.add_argument("--stability-percentage", type=int, default=25, help="allowed spread across 3 windows")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1500 ms windows, 4 trials, 50%% stability")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per perf_analyzer run")
    ap.add_argument("--out", type=Path, default=None,
                    help="summary JSON (default bench/out/perf_analyzer-summary.json, untracked)")
    ap.add_argument("--update-results", action="store_true",
                    help="write the summary into bench/results/, the committed results")
    ap.add_argument("--exports", type=Path, default=ROOT / "build" / "perf_analyzer")
    ap.add_argument("--tools", type=Path, default=ROOT / ".tools")
    args = ap.parse_args()
    args.out = summary_path(args.out, args.update_results)
    if args.quick:
        args.measurement_interval, args.max_trials, args.stability_percentage = 1500, 4, 50
    skills = [s.strip() for s in args.skills.split(",") if s.strip()]
    if not skills or any(s not in SKILL_INPUTS for s in skills):
        raise SystemExit(f"--skills must name some of {', '.join(SKILL_INPUTS)}")

    t0 = time.perf_counter()
    binary, libs = install(args.tools)
    print(f"perf_analyzer: {binary}", flush=True)
    inputs = write_inputs(HERE / "inputs")
    args.exports.mkdir(parents=True, exist_ok=True)

    def sweep(url: str) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for skill in skills:
            export = args.exports / f"perf_analyzer-{skill}.json"
            code = run_one(binary, libs, url, skill, inputs[skill], args.concurrency, export, args)
            if code != 0:
                print(f"perf_analyzer exited with {code} for {skill}; its log: {export.with_suffix('.log')}",
                      file=sys.stderr)
            if export.exists():
                rows += [{"skill": skill, **row} for row in summarize_export(load_export(export))]
        return rows

    if args.url:
        rows = sweep(args.url)
    else:
        from moonpipe.bench.server import (
            bench_model_repository,
            fixed_length_checkpoint,
            running_server,
        )

        with tempfile.TemporaryDirectory(prefix="moonpipe-pa-") as tmp:
            ckpt = fixed_length_checkpoint(Path(tmp) / "checkpoint", preset="tiny",
                                           source=ROOT / "checkpoints" / "tiny")
            repo = bench_model_repository(Path(tmp) / "model_repository", ckpt,
                                          {"device": "cpu", "dtype": "float32",
                                           "max_batch_size": str(max(8, max(args.concurrency)))})
            with running_server(repo, ckpt) as server:
                print(f"tritonserver ready at {server.urls.grpc}", flush=True)
                rows = sweep(server.urls.grpc)
    summary = {"tool": "perf_analyzer (tritonclient 2.51.0)", "concurrency": args.concurrency,
               "measurement_interval_ms": args.measurement_interval, "max_trials": args.max_trials,
               "stability_percentage": args.stability_percentage, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print("TTFT / ITL / latency in ms, derived from --profile-export-file")
    print(format_summaries(rows))
    print(f"saved {args.out} (raw exports in {args.exports}) ({time.perf_counter() - t0:.0f} s)")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
