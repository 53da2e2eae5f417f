"""``moonpipe golden-check DIR``: recompute a golden directory's entries and compare."""

from __future__ import annotations

import argparse
import sys

from moonpipe.errors import CheckpointError

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    import torch

    from moonpipe.model.golden import run_golden_check

    torch.set_num_threads(args.threads)
    try:
        results = run_golden_check(args.dir, page_size=args.page_size)
    except CheckpointError as exc:
        print(f"moonpipe golden-check: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(r.line())
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} entries OK" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "golden-check",
        help="compare moonpipe's model against reference goldens",
        description="Recompute every entry of a golden directory (golden.json, golden.safetensors, "
        "model.safetensors, image.png) in float32 on CPU; exit 1 on any mismatch.",
    )
    parser.add_argument("dir", metavar="DIR", help="golden directory, e.g. tests/data/golden/md2-tiny (shipped with the project)")
    parser.add_argument("--page-size", type=int, default=16, help="KV page size to run with (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.set_defaults(func=_run)
