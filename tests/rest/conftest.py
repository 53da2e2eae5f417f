"""Fixtures of the REST gateway tests: real ``moonpipe-gateway`` processes over the
session's real tritonserver (``tests/conftest.py``'s ``triton_server``).

``gateway`` is one gateway for the whole session (default settings, loopback, no keys);
``start_gateway`` starts extra ones with their own flags (API keys, small limits, an
unreachable Triton) and stops them after the test.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerHandle, metric_value


@dataclass
class GatewayProcess:
    """A running gateway: ``url`` is ``http://127.0.0.1:PORT``."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        """What a user passes to ``md.vl(endpoint=...)`` / ``OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def requests(self, route: str, status: int) -> float:
        return metric_value(self.metrics_text(), "moonpipe_gateway_requests_total", route=route, status=str(status))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _wait_listening(gw: GatewayProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"moonpipe-gateway exited with {gw.proc.returncode}:\n{gw.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{gw.url}/metrics", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"moonpipe-gateway did not listen within {timeout} s:\n{gw.log_text()[-3000:]}")


def launch_gateway(triton_url: str, log_dir: Path, *flags: str, env: dict[str, str] | None = None) -> GatewayProcess:
    """Start ``python -m moonpipe_gateway`` on a free loopback port; returns once it listens."""
    from moonpipe.triton_local import free_port

    port = free_port()
    log_path = log_dir / f"gateway-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moonpipe_gateway", "--port", str(port), "--triton-url", triton_url, *flags],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    gw = GatewayProcess(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        _wait_listening(gw, timeout=60)
    except BaseException:
        gw.stop()
        raise
    return gw


@pytest.fixture(scope="session")
def gateway(triton_server: ServerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The session's gateway (defaults; also answers to ``model="moondream2"``)."""
    gw = launch_gateway(triton_server.grpc_url, tmp_path_factory.mktemp("gateway"), "--model-id", "moondream2")
    yield gw
    gw.stop()


@pytest.fixture
def start_gateway(triton_server: ServerHandle, tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start extra gateways with flags (``triton_url=`` overrides the session server)."""
    started: list[GatewayProcess] = []

    def start(*flags: str, triton_url: str | None = None, env: dict[str, str] | None = None) -> GatewayProcess:
        gw = launch_gateway(triton_url or triton_server.grpc_url, tmp_path, *flags, env=env)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def image_uri(sample_image_bytes: bytes) -> str:
    """The session's sample PNG as a data URI."""
    return "data:image/png;base64," + base64.b64encode(sample_image_bytes).decode()


def post(url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """POST JSON (or raw bytes) and return ``(status, parsed JSON body)`` without raising."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


STRICT_KEY = "test-key-1"


@pytest.fixture(scope="module")
def strict_gateway(triton_server: ServerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with an API key, a 64 KiB body limit, a 32 KiB image limit and a 1 s timeout."""
    gw = launch_gateway(triton_server.grpc_url, tmp_path_factory.mktemp("strict-gateway"), "--api-key", STRICT_KEY,
                        "--max-body-mb", "0.0625", "--max-image-mb", "0.03125", "--request-timeout", "1")
    yield gw
    gw.stop()
