"""``moonpipe serve``: run the bundled tritonserver on this machine with model_repository/.

What ``make serve`` runs after installing: make the default synthetic checkpoint if none
is configured, write a sample image, start tritonserver on loopback ports, wait for
readiness, print the client command to try, then follow the server log until Ctrl-C
(or SIGTERM), which stops the server and its stub cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moonpipe.triton_local import TritonServer

__all__ = ["DEFAULT_CHECKPOINT", "register", "write_sample_image"]

DEFAULT_CHECKPOINT = "checkpoints/tiny"
CHECKPOINT_ENV = "MOONPIPE_CHECKPOINT"


def write_sample_image(path: Path) -> Path:
    """A small synthetic picture (a red ball on a table under a sky) to try the skills on."""
    from PIL import Image, ImageDraw

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (320, 240), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 150, 320, 240), fill=(150, 100, 60))  # table
    draw.ellipse((120, 90, 190, 160), fill=(210, 30, 40))  # ball
    draw.rectangle((230, 100, 270, 160), fill=(240, 240, 240))  # cup
    draw.ellipse((20, 20, 70, 70), fill=(250, 220, 60))  # sun
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)
    return path


def _resolve_checkpoint(arg: str | None) -> Path:
    """The checkpoint directory; the default one is made (synthetic, tiny) when missing."""
    chosen = arg or os.environ.get(CHECKPOINT_ENV) or ""
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not path.is_dir():
            raise SystemExit(f"moonpipe serve: checkpoint directory {path} does not exist")
        return path
    from moonpipe.model.checkpoint import ensure_checkpoint

    path = Path(DEFAULT_CHECKPOINT).resolve()
    start = time.perf_counter()
    ensure_checkpoint(path, preset="tiny")
    print(f"checkpoint: {path} (synthetic tiny, ready in {time.perf_counter() - start:.1f} s)")
    return path


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _follow(server: TritonServer, log_path: Path, quiet: bool) -> int:
    """Print new server log lines until the server exits (returns 1) or Ctrl-C."""
    with open(log_path, "rb") as log:
        log.seek(0, os.SEEK_END)
        while True:
            chunk = log.read()
            if chunk and not quiet:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            if not server.running():
                print("moonpipe serve: tritonserver exited", file=sys.stderr)
                return 1
            time.sleep(0.2)


def _admin_note() -> str:
    from moonpipe.triton_limits import ADMIN_APIS, ADMIN_KEY_ENV, ADMIN_KEY_HEADER

    apis = ", ".join(ADMIN_APIS)
    if os.environ.get(ADMIN_KEY_ENV):
        return f"admin APIs ({apis}) need header {ADMIN_KEY_HEADER}: ${ADMIN_KEY_ENV}"
    return f"admin APIs ({apis}) closed; set {ADMIN_KEY_ENV} to use them"


def _serve(args: argparse.Namespace) -> int:
    from moonpipe.triton_local import TritonServer, TritonServerError

    checkpoint = _resolve_checkpoint(args.checkpoint)
    sample = write_sample_image(Path(args.sample_image))
    repository = Path(args.model_repository).resolve()
    log_path = Path(args.log_file).resolve()
    env = {CHECKPOINT_ENV: str(checkpoint)}
    server = TritonServer(repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, env=env, log_path=log_path, host=args.host)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"starting tritonserver (log: {log_path}) ...", flush=True)
    start = time.perf_counter()
    try:
        server.start()
        server.wait_ready(timeout=args.ready_timeout)
        grpc = server.urls.grpc
        url_flag = "" if grpc == "127.0.0.1:8001" else f" --url {grpc}"
        client = Path(sys.prefix) / "bin" / "moonpipe-client"
        shown = os.path.relpath(client) if client.exists() else "moonpipe-client"
        print(
            f"\nmoonpipe is ready in {time.perf_counter() - start:.1f} s: gRPC {grpc}, "
            f"HTTP {server.urls.http}, metrics {server.urls.metrics}\n"
            f"checkpoint {checkpoint}\n"
            f"{_admin_note()}\n\n"
            f"Try, in another terminal:\n\n"
            f"    {shown}{url_flag} caption {os.path.relpath(sample)} --stream\n\n"
            f"Ctrl-C stops the server.\n",
            flush=True,
        )
        return _follow(server, log_path, args.quiet)
    except TritonServerError as exc:
        print(f"moonpipe serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping tritonserver ...", flush=True)
        return 0
    finally:
        code = server.stop()
        if code is not None:
            print(f"tritonserver stopped (exit code {code})", flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run tritonserver with model_repository/ on this machine",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", metavar="DIR",
                        help=f"checkpoint directory (env {CHECKPOINT_ENV}; default: make a synthetic "
                             f"tiny one in {DEFAULT_CHECKPOINT})")
    parser.add_argument("--model-repository", default="model_repository", metavar="DIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log-file", default="checkpoints/tritonserver.log", metavar="PATH")
    parser.add_argument("--sample-image", default="checkpoints/sample.png", metavar="PATH")
    parser.add_argument("--ready-timeout", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--quiet", action="store_true", help="do not echo the server log")
    parser.set_defaults(func=_serve)
