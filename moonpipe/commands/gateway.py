"""The REST gateway as a child of ``moonpipe serve`` (``moonpipe_gateway``, a separate package).

``moonpipe serve`` starts it beside tritonserver once Triton is ready, on
``127.0.0.1:2020`` by default (Moondream's own local port, so the official client's
``md.vl(endpoint="http://localhost:2020/v1")`` works), and stops it first on the way
out. The engine never imports the gateway: it runs as ``python -m moonpipe_gateway``.
A gateway that cannot start (package missing, port taken) is reported and Triton keeps
serving.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["DEFAULT_GATEWAY_PORT", "GatewayChild", "add_gateway_arguments", "gateway_usage", "start_gateway"]

DEFAULT_GATEWAY_PORT = 2020


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway-port", type=int, default=DEFAULT_GATEWAY_PORT, metavar="PORT",
                        help=f"port of the REST gateway (Moondream's REST API + OpenAI chat completions; "
                             f"default {DEFAULT_GATEWAY_PORT})")
    parser.add_argument("--gateway-host", default=None, metavar="ADDR",
                        help="address the gateway binds (default: --host); API keys come from "
                             "MOONPIPE_GATEWAY_API_KEYS")
    parser.add_argument("--no-gateway", action="store_true", help="do not start the REST gateway")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):  # not listening yet, or 503 while Triton is not ready
        return False


class GatewayChild:
    """``python -m moonpipe_gateway`` as a child process, its output in ``log_path``."""

    def __init__(self, host: str, port: int, triton_url: str, log_path: Path) -> None:
        self.host = host
        self.port = port
        self.triton_url = triton_url
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moonpipe_gateway", "--host", self.host, "--port", str(self.port),
                 "--triton-url", self.triton_url], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/health`` answers 200; raises ``RuntimeError`` with the log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            if _healthy(f"{self.url}/health"):
                return
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""
        raise RuntimeError(f"the REST gateway did not become ready on {self.url} (port in use?); "
                           f"its log {self.log_path}:\n{tail}")

    def stop(self) -> int | None:
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        return self._proc.returncode


def start_gateway(args: argparse.Namespace, triton_url: str, log_path: Path) -> GatewayChild | None:
    """Start and wait for the gateway unless ``--no-gateway``; None (with the reason printed)
    when it is off or could not start."""
    if args.no_gateway:
        return None
    if importlib.util.find_spec("moonpipe_gateway") is None:
        print("REST gateway: not installed (pip install -e gateway); serving gRPC only", file=sys.stderr)
        return None
    child = GatewayChild(args.gateway_host or args.host, args.gateway_port, triton_url, log_path)
    child.start()
    try:
        child.wait_ready()
    except RuntimeError as exc:
        child.stop()
        print(f"REST gateway: {exc}\nserving gRPC only (--gateway-port PORT to move it, --no-gateway to skip it)",
              file=sys.stderr)
        return None
    return child


def gateway_usage(child: GatewayChild, sample: Path) -> str:
    """How to call the gateway with Moondream's official client and with OpenAI's."""
    endpoint = f"{child.url}/v1"
    python = os.path.relpath(Path(sys.prefix) / "bin" / "python")
    return (
        f"REST gateway at {endpoint} (log: {child.log_path}): Moondream's REST API and OpenAI chat completions.\n"
        f"With Moondream's official client (pip install --no-deps moondream pillow):\n\n"
        f"    {python} -c \"import moondream as md; from PIL import Image; "
        f"print(md.vl(endpoint='{endpoint}').caption(Image.open('{os.path.relpath(sample)}'))['caption'])\"\n\n"
        f"or any OpenAI client with base_url='{endpoint}' (docs/rest.md).\n"
    )
