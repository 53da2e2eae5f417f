"""``moonpipe-client``: call a moonpipe server from the shell.

    moonpipe-client [--url HOST:PORT] [--timeout S] SKILL IMAGE [TEXT] [--stream] [--json]
                    [--draw OUT.png]
    moonpipe-client detect --images DIR --object person --out results.jsonl [--concurrency N]

Exit codes: 0 success; 1 the request was invalid (bad image, missing file, empty text)
or the server failed it (in a batch: at least one image failed); 2 bad usage; 3 the
server could not be reached or did not answer in time; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from moonpipe_client.aio import AsyncClient
from moonpipe_client.batch import Progress, find_images, run_batch
from moonpipe_client.client import DEFAULT_TIMEOUT, DEFAULT_URL, Client
from moonpipe_client.draw import draw_result
from moonpipe_client.errors import ConnectionFailed, InvalidRequest, MoonpipeError, RequestTimeout
from moonpipe_client.results import Answer, Caption, Detection, Points, Result, Segment

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_TEXT_HELP = {"query": "the question", "point": "the object to point at",
              "detect": "the object to detect", "segment": "the object to outline"}


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Accepted before and after the skill; the sub-command copy only overrides when given.
    default_url = argparse.SUPPRESS if suppress else os.environ.get("MOONPIPE_URL", DEFAULT_URL)
    default_timeout = argparse.SUPPRESS if suppress else DEFAULT_TIMEOUT
    parser.add_argument("--url", default=default_url,
                        help=f"server gRPC address host:port (env MOONPIPE_URL; default {DEFAULT_URL})")
    parser.add_argument("--timeout", type=float, default=default_timeout,
                        help=f"seconds one request may take (default {DEFAULT_TIMEOUT:g})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moonpipe-client", description="Ask a moonpipe server about images.")
    _connection_options(parser, suppress=False)
    skills = parser.add_subparsers(dest="skill", required=True, metavar="SKILL")
    for skill in ("caption", "query", "point", "detect", "segment"):
        sub = skills.add_parser(skill, help=f"{skill} an image" if skill != "query" else "ask a question")
        _connection_options(sub, suppress=True)
        sub.add_argument("image", nargs="?", help="image file (omit with --images)")
        if skill != "caption":
            sub.add_argument("text", nargs="?", help=_TEXT_HELP[skill])
            flag = "--question" if skill == "query" else "--object"
            sub.add_argument(flag, dest="text_option", metavar="TEXT", help=f"{_TEXT_HELP[skill]} (same as TEXT)")
        if skill == "caption":
            sub.add_argument("--length", choices=("short", "normal", "long"), default="normal")
        if skill in ("caption", "query", "segment"):
            sub.add_argument("--max-tokens", type=int)
        if skill in ("caption", "query"):
            sub.add_argument("--temperature", type=float)
            sub.add_argument("--top-p", type=float)
        if skill in ("point", "detect"):
            sub.add_argument("--max-objects", type=int)
        if skill != "segment":
            sub.add_argument("--stream", action="store_true", help="print output as it arrives")
        sub.add_argument("--json", action="store_true", help="print the result as Moondream's JSON")
        if skill in ("point", "detect", "segment"):
            sub.add_argument("--draw", metavar="OUT.png", help="save the image with the result drawn on it")
        sub.add_argument("--images", metavar="DIR", help="batch: run on every image under DIR")
        sub.add_argument("--out", metavar="FILE", default="-", help="batch: JSON lines file (default stdout)")
        sub.add_argument("--concurrency", type=int, default=8, help="batch: requests in flight (default 8)")
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("length", "max_tokens", "temperature", "top_p", "max_objects")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _print_result(result: Result, out: TextIO) -> None:
    if isinstance(result, Caption):
        print(result.caption, file=out)
    elif isinstance(result, Answer):
        print(result.answer, file=out)
    elif isinstance(result, Points):
        print(f"{len(result.points)} point(s)", file=out)
        for p in result.points:
            print(f"x={p.x:.4f} y={p.y:.4f}", file=out)
    elif isinstance(result, Detection):
        print(f"{len(result.objects)} object(s)", file=out)
        for b in result.objects:
            print(f"x_min={b.x_min:.4f} y_min={b.y_min:.4f} x_max={b.x_max:.4f} y_max={b.y_max:.4f}", file=out)
    elif isinstance(result, Segment):
        if result.bbox is None and not result.path:
            print("not found", file=out)
        else:
            if result.bbox is not None:
                b = result.bbox
                print(f"bbox x_min={b.x_min:.4f} y_min={b.y_min:.4f} x_max={b.x_max:.4f} y_max={b.y_max:.4f}",
                      file=out)
            print(f"path {result.path}", file=out)
    if result.finish_reason != "stop":
        print(f"(finished: {result.finish_reason})", file=sys.stderr)


def _run_single(args: argparse.Namespace, text: str) -> int:
    options = _options(args)
    stream = bool(getattr(args, "stream", False)) and not args.json
    with Client(args.url, timeout=args.timeout) as client:
        result: Result
        if stream:
            method = getattr(client, args.skill)
            call_args = (args.image,) if args.skill == "caption" else (args.image, text)
            with method(*call_args, stream=True, **options) as deltas:
                for item in deltas:
                    if isinstance(item, str):
                        sys.stdout.write(item)
                    else:
                        sys.stdout.write(json.dumps(item.to_dict()) + "\n")
                    sys.stdout.flush()
                final = deltas.result
            if args.skill in ("caption", "query"):
                sys.stdout.write("\n")
            if final is None:
                raise MoonpipeError("the stream ended without a result")
            result = final
            if result.finish_reason != "stop":
                print(f"(finished: {result.finish_reason})", file=sys.stderr)
        else:
            if args.skill == "caption":
                result = client.caption(args.image, **options)
            else:
                result = getattr(client, args.skill)(args.image, text, **options)
            if args.json:
                print(json.dumps(result.to_dict(), ensure_ascii=False))
            else:
                _print_result(result, sys.stdout)
    if getattr(args, "draw", None):
        draw_result(args.image, result, args.draw)
        print(f"wrote {args.draw}", file=sys.stderr)
    return EXIT_OK


async def _run_batch_async(args: argparse.Namespace, text: str, images: list[Path], out: TextIO) -> int:
    async with AsyncClient(args.url, timeout=args.timeout) as client:
        if not await client.is_ready():
            raise ConnectionFailed(f"cannot reach a ready moonpipe server at {args.url} "
                                   "(is tritonserver running and is the gRPC port right?)")
        summary = await run_batch(client, args.skill, images, Path(args.images), text, _options(args),
                                  out, args.concurrency, Progress(len(images)))
    print(f"{summary.num_ok + summary.num_failed} image(s): {summary.num_ok} ok, "
          f"{summary.num_failed} failed, {summary.seconds:.1f} s", file=sys.stderr)
    return EXIT_FAILED if summary.num_failed else EXIT_OK


def _run_batch(args: argparse.Namespace, text: str) -> int:
    folder = Path(args.images)
    if not folder.is_dir():
        raise InvalidRequest(f"--images: {folder} is not a folder")
    images = find_images(folder)
    if not images:
        raise InvalidRequest(f"--images: no image files under {folder}")
    if args.concurrency < 1:
        raise InvalidRequest(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.out == "-":
        return asyncio.run(_run_batch_async(args, text, images, sys.stdout))
    with open(args.out, "w", encoding="utf-8") as out:
        return asyncio.run(_run_batch_async(args, text, images, out))


def _text_argument(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.skill == "caption":
        return ""
    positional, option = getattr(args, "text", None), getattr(args, "text_option", None)
    if args.images and args.image is not None and positional is None:
        positional, args.image = args.image, None  # `detect --images DIR person`
    if positional is not None and option is not None:
        parser.error("give the text either as TEXT or as an option, not both")
    text = positional if positional is not None else option
    if text is None:
        parser.error(f"{args.skill} needs {_TEXT_HELP[args.skill]}")
    return str(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    text = _text_argument(args, parser)
    if args.images and args.image is not None:
        parser.error("give either IMAGE or --images DIR, not both")
    if not args.images and args.image is None:
        parser.error("an IMAGE (or --images DIR) is required")
    if args.images and getattr(args, "draw", None):
        parser.error("--draw works on a single image, not with --images")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        return _run_batch(args, text) if args.images else _run_single(args, text)
    except (ConnectionFailed, RequestTimeout) as exc:
        print(f"moonpipe-client: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except InvalidRequest as exc:
        print(f"moonpipe-client: invalid request: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except MoonpipeError as exc:
        print(f"moonpipe-client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"moonpipe-client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("moonpipe-client: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
