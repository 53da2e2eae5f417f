"""``moonpipe gpu-check``: every GPU check and benchmark in one command (docs/gpu.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]

_DESCRIPTION = """Runs, one subprocess after another and continuing past failures: the
environment report, the kernels' start-up checks and kernels per decode step, `pytest -m gpu
tests/gpu`, `bench pipeline` with decode kernels fused / torch / triton, and `bench short`
(md2 shapes, bf16), each within its own time budget (8 minutes in all on a GPU). Writes
DIR/gpu-check.json (every step's status, output tail and results) and DIR/gpu-check.log.
On a lent GPU machine, from the repository root: PYTHONPATH=. python3 -m moonpipe.cli
gpu-check --out $OUT/gpu-check. `--device cpu --model tiny` runs the same steps on CPU with
tiny workloads (the kernel paths under the Triton interpreter)."""


def _names(text: str) -> list[str]:
    from moonpipe.gpucheck.plan import STEP_NAMES

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in STEP_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"step names are {', '.join(STEP_NAMES)}; got {text!r}")
    return names


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gpu-check", help="every GPU check and benchmark in one run (JSON + log)",
                       description=_DESCRIPTION)
    p.add_argument("--out", type=Path, default=None, help="output folder (no default: required unless --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan, each step's budget and the device-tool command; run nothing")
    p.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu")
    p.add_argument("--model", default=None, choices=["tiny", "small", "md2"],
                   help="weights preset (default md2 on cuda, tiny on cpu)")
    p.add_argument("--only", type=_names, default=None, help="comma-separated steps to run (default all)")
    p.add_argument("--skip", type=_names, default=[], help="comma-separated steps to leave out (default none)")
    p.add_argument("--total-budget", type=float, default=None,
                   help="seconds for the whole run (default 480 on cuda, 900 on cpu)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from moonpipe.gpucheck.plan import (
        DEVICE_RUN_TIMEOUT_S,
        build_plan,
        device_run_command,
        total_budget,
    )

    if args.out is None and not args.dry_run:
        raise SystemExit("moonpipe gpu-check: --out DIR is required (or --dry-run)")
    model = args.model or ("md2" if args.device.startswith("cuda") else "tiny")
    out = args.out.resolve() if args.out else Path("$OUT/gpu-check")  # steps run from the repository root
    steps = [s for s in build_plan(args.device, model, out)
             if (args.only is None or s.name in args.only) and s.name not in args.skip]
    budget = args.total_budget or total_budget(args.device)
    if args.dry_run:
        print(f"moonpipe gpu-check plan: device {args.device}, model {model}, {len(steps)} steps, "
              f"total budget {budget:.0f} s (sum of step budgets {sum(s.budget_s for s in steps)} s)")
        for i, step in enumerate(steps, 1):
            print(f"{i}. {step.name} ({step.budget_s} s): {step.what}\n   $ {step.command()}")
        print(f"writes {out}/gpu-check.json and {out}/gpu-check.log")
        print("device tool (from the repository root, the machine's own python3, nothing carried):\n"
              f"  run(command={device_run_command()!r}, timeout_s={DEVICE_RUN_TIMEOUT_S})")
        return 0
    from moonpipe.gpucheck.report import format_report
    from moonpipe.gpucheck.runner import run_plan

    doc = run_plan(steps, out, device=args.device, model=model, total_budget_s=budget)
    report = format_report(doc)
    (out / "gpu-check.txt").write_text(report + "\n")
    print("\n" + report)
    return 0 if doc["summary"]["ok"] == len(steps) else 1
