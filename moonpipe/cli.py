"""The ``moonpipe`` command. Each sub-command lives in ``moonpipe/commands/<name>.py``
and exposes ``register(subparsers)``; modules are imported lazily so ``--help`` is fast."""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

# modules under moonpipe.commands, each registering its own sub-command(s)
_COMMANDS = ("serve", "checkpoint", "golden", "bench", "gpu_check")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moonpipe",
        description="moonpipe: pipelined Moondream serving on Triton. See README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS:
        try:
            mod = importlib.import_module(f"moonpipe.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"moonpipe.commands.{module}":
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
