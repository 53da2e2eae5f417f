"""``moonpipe serve``: run the bundled tritonserver on this machine with model_repository/.

What ``make serve`` runs after installing: check that the ports are free, make the
default synthetic checkpoint if none is configured, write a sample image, apply any
``--param NAME=VALUE`` (and ``MOONPIPE_PARAM_<name>``) overrides to a copy of the model
repository, start tritonserver on loopback ports, wait for readiness, print the client
command to try, then follow the server log until Ctrl-C (or SIGTERM), which stops the
server and its stub cleanly. Each instance writes its own log, named by its gRPC port.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from moonpipe.commands.gateway import add_gateway_arguments, gateway_usage, start_gateway
from moonpipe.repository import PARAM_ENV_PREFIX, overrides_from_env, parse_override

if TYPE_CHECKING:
    from moonpipe.triton_local import TritonServer

__all__ = ["DEFAULT_CHECKPOINT", "InstancePaths", "instance_paths", "register", "write_sample_image"]

RUNTIME_DIR = Path("checkpoints")  # untracked: checkpoints, logs, rendered repositories
DEFAULT_CHECKPOINT = str(RUNTIME_DIR / "tiny")
CHECKPOINT_ENV = "MOONPIPE_CHECKPOINT"
# (what, argparse dest, make variable, flag) of each port
_PORTS = (("HTTP", "http_port", "HTTP_PORT", "--http-port"), ("gRPC", "grpc_port", "GRPC_PORT", "--grpc-port"),
          ("metrics", "metrics_port", "METRICS_PORT", "--metrics-port"))
_GATEWAY_PORT = ("REST gateway", "gateway_port", "GATEWAY_PORT", "--gateway-port")


@dataclass(frozen=True, slots=True)
class InstancePaths:
    """The files of one server instance, so two instances from one checkout never share one."""

    log: Path
    repository: Path  # the rendered copy of the model repository (with --param)
    gateway_log: Path


def instance_paths(grpc_port: int, base: Path = RUNTIME_DIR) -> InstancePaths:
    """An instance's files, named by its gRPC port (two servers cannot share a port)."""
    return InstancePaths(log=base / f"tritonserver-{grpc_port}.log",
                         repository=base / f"model_repository-{grpc_port}",
                         gateway_log=base / f"gateway-{grpc_port}.log")


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


def _port_problem(args: argparse.Namespace) -> str | None:
    """Why the chosen ports cannot be used (naming the make variable and flag), or None."""
    from moonpipe.triton_local import port_in_use

    ports = [(*p, args.host) for p in _PORTS]
    if not args.no_gateway:
        ports.append((*_GATEWAY_PORT, args.gateway_host or args.host))
    seen: dict[int, str] = {}
    for what, dest, _, _, _ in ports:
        port = getattr(args, dest)
        if port in seen:
            return f"the {seen[port]} and {what} ports are both {port}; give each its own"
        seen[port] = what
    lines = []
    for what, dest, variable, flag, host in ports:
        port = getattr(args, dest)
        if not port_in_use(host, port):
            continue
        free = next((p for p in range(port + 1000, 65536, 1000) if p not in seen and not port_in_use(host, p)),
                    None)
        lines.append(f"port {port} ({what}) on {host} is in use (another moonpipe serve or tritonserver?); "
                     f"choose another: make serve {variable}={free or 'N'}, or moonpipe serve {flag} {free or 'N'}")
    return "\n".join(lines) or None


def _repository(args: argparse.Namespace, paths: InstancePaths) -> Path:
    """The model repository to serve: the project's, or a copy with the overrides set."""
    from moonpipe.repository import render

    source = Path(args.model_repository).resolve()
    overrides = {**overrides_from_env(os.environ), **dict(args.param)}
    if not overrides:
        return source
    for change in render(source, paths.repository, overrides):
        print(f"parameter {change}")
    print(f"(model repository with these overrides: {paths.repository})")
    return paths.repository.resolve()


def _admin_note() -> str:
    from moonpipe.triton_limits import ADMIN_APIS, ADMIN_KEY_ENV, ADMIN_KEY_HEADER

    apis = ", ".join(ADMIN_APIS)
    if os.environ.get(ADMIN_KEY_ENV):
        return f"admin APIs ({apis}) need header {ADMIN_KEY_HEADER}: ${ADMIN_KEY_ENV}"
    return f"admin APIs ({apis}) closed; set {ADMIN_KEY_ENV} to use them"


def _serve(args: argparse.Namespace) -> int:
    from moonpipe.triton_local import TritonServer, TritonServerError

    problem = _port_problem(args)  # before anything is made or started
    if problem:
        print(f"moonpipe serve: {problem}", file=sys.stderr)
        return 1
    paths = instance_paths(args.grpc_port)
    checkpoint = _resolve_checkpoint(args.checkpoint)
    sample = write_sample_image(Path(args.sample_image))
    repository = _repository(args, paths)
    log_path = Path(args.log_file or paths.log).resolve()
    env = {CHECKPOINT_ENV: str(checkpoint)}
    server = TritonServer(repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, env=env, log_path=log_path, host=args.host)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"starting tritonserver (log: {log_path}) ...", flush=True)
    start = time.perf_counter()
    gateway = None
    try:
        server.start()
        server.wait_ready(timeout=args.ready_timeout)
        grpc = server.urls.grpc
        url_flag = "" if grpc == "127.0.0.1:8001" else f" --url {grpc}"
        gateway = start_gateway(args, grpc, paths.gateway_log.resolve())
        client = Path(sys.prefix) / "bin" / "moonpipe-client"
        shown = os.path.relpath(client) if client.exists() else "moonpipe-client"
        print(
            f"\nmoonpipe is ready in {time.perf_counter() - start:.1f} s: gRPC {grpc}, "
            f"HTTP {server.urls.http}, metrics {server.urls.metrics}\n"
            f"checkpoint {checkpoint}\n"
            f"{_admin_note()}\n\n"
            f"Try, in another terminal:\n\n"
            f"    {shown}{url_flag} caption {os.path.relpath(sample)} --stream\n\n"
            + (gateway_usage(gateway, sample) + "\n" if gateway is not None else "")
            + "Ctrl-C stops the server.\n",
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
        if gateway is not None:
            gateway.stop()
        code = server.stop()
        if code is not None:
            print(f"tritonserver stopped (exit code {code})", flush=True)


def _override(text: str) -> tuple[str, str]:
    try:
        return parse_override(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run tritonserver with model_repository/ on this machine",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", metavar="DIR",
                        help=f"checkpoint directory (env {CHECKPOINT_ENV}; default: make a synthetic "
                             f"tiny one in {DEFAULT_CHECKPOINT})")
    parser.add_argument("--param", action="append", type=_override, default=[], metavar="NAME=VALUE",
                        help="set a config.pbtxt parameter (an engine or adapter setting, e.g. "
                             "max_batch_size=16) in a copy of the model repository; repeatable; "
                             f"{PARAM_ENV_PREFIX}<name> in the environment does the same "
                             "(default: the repository's values)")
    parser.add_argument("--model-repository", default="model_repository", metavar="DIR",
                        help="the Triton model repository to serve (default model_repository)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the three ports bind to (default 127.0.0.1: this machine only)")
    parser.add_argument("--http-port", type=int, default=8000, metavar="PORT",
                        help="Triton's HTTP/REST port, also its health checks (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, metavar="PORT",
                        help="Triton's gRPC port, the one moonpipe-client talks to (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, metavar="PORT",
                        help="Prometheus metrics at /metrics (default 8002)")
    parser.add_argument("--log-file", default=None, metavar="PATH",
                        help=f"where the server log goes (default {RUNTIME_DIR}/tritonserver-<grpc port>.log: "
                             "one per instance)")
    parser.add_argument("--sample-image", default=str(RUNTIME_DIR / "sample.png"), metavar="PATH",
                        help=f"a small picture to try the skills on, written if missing "
                             f"(default {RUNTIME_DIR / 'sample.png'})")
    parser.add_argument("--ready-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="how long to wait for the model to load (default 300)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the server log here")
    add_gateway_arguments(parser)
    parser.set_defaults(func=_serve)
