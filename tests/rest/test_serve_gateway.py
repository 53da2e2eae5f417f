"""``moonpipe serve`` starts the REST gateway beside tritonserver and stops it on the way out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import moondream as md
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def test_serve_starts_the_gateway_and_prints_how_to_call_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from moonpipe.triton_local import free_port

    http, grpc, metrics, rest = free_port(), free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "moonpipe.cli", "serve", "--checkpoint", str(tiny_checkpoint), "--quiet",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--gateway-port", str(rest), "--log-file", str(tmp_path / "triton.log"),
           "--sample-image", str(tmp_path / "sample.png")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[2], env=dict(os.environ))
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        while not any("Ctrl-C stops the server" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        printed = "".join(lines)
        endpoint = f"http://127.0.0.1:{rest}/v1"
        assert f"REST gateway at {endpoint}" in printed and f"md.vl(endpoint='{endpoint}')" in printed
        caption = md.vl(endpoint=endpoint).caption(Image.open(tmp_path / "sample.png"), settings={"max_tokens": 3, "temperature": 5.0, "top_p": 1.0})
        assert caption["caption"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    import socket

    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", rest)) != 0, "the gateway outlived moonpipe serve"
