"""``moonpipe-client``: call a moonpipe server from the shell.

    moonpipe-client [--url HOST:PORT] [--timeout S] SKILL IMAGE [TEXT] [--stream] [--json]
                    [--draw OUT.png]
    moonpipe-client detect --images DIR --object person --out results.jsonl [--concurrency N]
                    [--resume | --append]

Exit codes: 0 success; 1 the request was invalid (bad image, missing file, empty text)
or the server failed it (in a batch: at least one image failed); 2 bad usage; 3 the
server could not be reached or did not answer in time; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from moonpipe_client.aio import AsyncClient
from moonpipe_client.batch import Progress, find_images, image_name, run_batch
from moonpipe_client.batch_output import BatchOutput
from moonpipe_client.cli_options import TEXT_HELP, build_parser, skills_taking
from moonpipe_client.client import Client
from moonpipe_client.connection import Connection
from moonpipe_client.draw import draw_result
from moonpipe_client.errors import ConnectionFailed, InvalidRequest, MoonpipeError, RequestTimeout
from moonpipe_client.results import Answer, Caption, Detection, Points, Result, Segment

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("length", "max_tokens", "temperature", "top_p", "max_objects")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    """The client's connection keywords (``tls=None``: decided by the URL and certificates)."""
    headers = [*(args.header or ()), *(getattr(args, "header_after", None) or ())]
    return {"tls": True if args.tls else None, "ca_cert": args.ca_cert, "client_cert": args.client_cert,
            "client_key": args.client_key, "headers": headers}


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


def _stream_result(client: Client, args: argparse.Namespace, text: str) -> Result:
    method = getattr(client, args.skill)
    call_args = (args.image,) if args.skill == "caption" else (args.image, text)
    with method(*call_args, stream=True, **_options(args)) as deltas:
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
    return final


def _run_single(args: argparse.Namespace, text: str) -> int:
    stream = bool(getattr(args, "stream", False)) and not args.json
    with Client(args.url, timeout=args.timeout, **_connection(args)) as client:
        result: Result
        if stream:
            result = _stream_result(client, args, text)
        else:
            if args.skill == "caption":
                result = client.caption(args.image, **_options(args))
            else:
                result = getattr(client, args.skill)(args.image, text, **_options(args))
            if args.json:
                print(json.dumps(result.to_record(), ensure_ascii=False))
            else:
                _print_result(result, sys.stdout)
    if result.finish_reason != "stop" and not args.json:
        print(f"(finished: {result.finish_reason})", file=sys.stderr)
    if getattr(args, "draw", None):
        draw_result(args.image, result, args.draw, label=text or None)
        print(f"wrote {args.draw}", file=sys.stderr)
    return EXIT_OK


def _batch_mode(args: argparse.Namespace) -> str:
    return "resume" if args.resume else "append" if args.append else "replace"


async def _run_batch_async(args: argparse.Namespace, text: str, images: list[Path]) -> int:
    root = Path(args.images)
    async with AsyncClient(args.url, timeout=args.timeout, **_connection(args)) as client:
        if not await client.is_ready():  # before the output is touched
            raise ConnectionFailed(f"cannot reach a ready moonpipe server at {args.url} "
                                   "(is tritonserver running, is this its gRPC port (8001 by default), "
                                   "and is the model loaded?)")
        output = BatchOutput(args.out, _batch_mode(args))
        todo = [p for p in images if image_name(p, root) not in output.previous.done]
        if output.previous.done or output.previous.dropped:
            print(f"resuming {args.out}: {len(images) - len(todo)} image(s) already done, "
                  f"{len(todo)} to run ({output.previous.dropped} failed or unreadable line(s) "
                  "dropped to run again)", file=sys.stderr)
        if not todo:
            return EXIT_OK
        try:
            with output as out:
                summary = await run_batch(client, args.skill, todo, root, text, _options(args), out,
                                          args.concurrency, Progress(len(todo)))
        except (KeyboardInterrupt, asyncio.CancelledError, MoonpipeError):
            if output.path is not None and output.num_new_bytes:
                print(f"\nmoonpipe-client: the results so far are in {output.path}; run the same "
                      "command with --resume to do the rest", file=sys.stderr)
            raise
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
    return asyncio.run(_run_batch_async(args, text, images))


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
        parser.error(f"{args.skill} needs {TEXT_HELP[args.skill]}")
    return str(text)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, turning a flag of another skill into an error that names the skills taking it."""
    args, extra = parser.parse_known_args(argv)
    for item in extra:
        flag = item.split("=", 1)[0]
        takers = skills_taking(flag)
        if takers:
            parser.error(f"{flag} is an option of {', '.join(takers)}, not of {args.skill}")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _check_usage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.images and args.image is not None:
        parser.error("give either IMAGE or --images DIR, not both")
    if not args.images and args.image is None:
        parser.error("an IMAGE (or --images DIR) is required")
    if args.images and getattr(args, "draw", None):
        parser.error("--draw works on a single image, not with --images")
    if not args.images and (args.resume or args.append or args.out != "-"):
        parser.error("--out, --resume and --append are batch options: use them with --images DIR")
    if args.images and (args.resume or args.append) and args.out == "-":
        parser.error(f"--{_batch_mode(args)} needs --out FILE (stdout cannot be resumed or appended to)")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        Connection.create(args.url, **_connection(args))
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    text = _text_argument(args, parser)
    _check_usage(args, parser)
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
