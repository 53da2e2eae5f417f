"""``moonpipe checkpoint make``: write a deterministic synthetic checkpoint directory."""

from __future__ import annotations

import argparse
import sys
import time

from moonpipe.errors import CheckpointError

__all__ = ["register"]


def _make(args: argparse.Namespace) -> int:
    from moonpipe.model.checkpoint import make_checkpoint

    start = time.perf_counter()
    try:
        out = make_checkpoint(args.out_dir, preset=args.preset, seed=args.seed, dtype=args.dtype, force=args.force)
    except (CheckpointError, ValueError) as exc:
        print(f"moonpipe checkpoint make: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.preset} checkpoint (seed {args.seed}, {args.dtype}) to {out} in {time.perf_counter() - start:.1f}s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoint", help="synthetic checkpoints", description=__doc__)
    sub = parser.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    make = sub.add_parser(
        "make",
        help="write config.json, model.safetensors and tokenizer.json with seeded random weights",
        description="Write a deterministic synthetic checkpoint (random weights, real key names).",
    )
    make.add_argument("--preset", choices=("tiny", "small", "md2"), default="tiny",
                      help="tiny: golden md2-tiny sizes; small: CPU benchmark; md2: real sizes (default tiny)")
    make.add_argument("--seed", type=int, default=0, help="weights/tokenizer seed (default 0)")
    make.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                      help="stored weight dtype (default float16, as the released moondream2)")
    make.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    make.add_argument("out_dir", metavar="OUT_DIR")
    make.set_defaults(func=_make)
