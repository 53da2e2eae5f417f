"""``moonpipe serve`` as a user runs it: free-port check, --param, per-instance log, Ctrl-C."""

from __future__ import annotations

import io
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from moonpipe_client import Caption, Client, InvalidRequest
from PIL import Image

from moonpipe.triton_local import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _serve(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "moonpipe.cli", "serve",
                             "--model-repository", str(ROOT / "model_repository"), *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], text: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        try:
            seen += lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {text!r} within {timeout} s; output:\n{seen}") from None
    return seen


@pytest.fixture
def served(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int], Path]]:
    ports = [free_port(), free_port(), free_port()]
    proc = _serve(tmp_path, "--checkpoint", str(tiny_checkpoint), "--http-port", str(ports[0]),
                  "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--quiet",
                  "--param", "max_image_bytes=20000")
    try:
        yield proc, ports, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_serve_with_a_param_a_busy_port_and_ctrl_c(served: tuple[subprocess.Popen[str], list[int], Path],
                                                   tiny_checkpoint: Path) -> None:
    proc, (_, grpc, _), cwd = served
    lines = _lines(proc)
    output = _wait_for(lines, "Ctrl-C stops the server", timeout=300)
    assert "parameter moondream: max_image_bytes=20000" in output
    assert f"--url 127.0.0.1:{grpc} caption" in output  # the printed command names this port
    with Client(f"127.0.0.1:{grpc}", timeout=120) as client:
        assert isinstance(client.caption(cwd / "checkpoints/sample.png", max_tokens=2), Caption)
        noise = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), np.uint8)).save(noise, "PNG")
        with pytest.raises(InvalidRequest, match=r"over the limit of 20000 bytes.*max_image_bytes"):
            client.caption(noise.getvalue())  # the --param reached the engine
    second = _serve(cwd, "--checkpoint", str(tiny_checkpoint), "--http-port", str(free_port()),
                    "--grpc-port", str(grpc), "--metrics-port", str(free_port()))
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 1 and f"port {grpc} (gRPC) on 127.0.0.1 is in use" in out
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    log = cwd / f"checkpoints/tritonserver-{grpc}.log"
    assert "Started GRPCInferenceService" in log.read_text()
    assert not (cwd / "checkpoints/tritonserver.log").exists()
    assert 'string_value: "20000"' in (cwd / f"checkpoints/model_repository-{grpc}/moondream/config.pbtxt").read_text()
