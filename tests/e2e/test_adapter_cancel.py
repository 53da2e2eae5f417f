"""Cancellation and disconnection mid-stream free the request's KV pages (per the metrics)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Caller, ServerHandle, build_inputs, wait_until_idle

pytestmark = pytest.mark.e2e

# A sampled caption from the synthetic checkpoint practically never samples eos early: it
# streams ~10 s of tokens, so it is cancelled long before its end.
LONG: dict[str, Any] = {"max_tokens": 1000, "temperature": 1.0, "stream": True}


def test_cancel_mid_stream_ends_the_request_and_frees_its_pages(
        triton_server: ServerHandle, moondream: Caller, sample_image_bytes: bytes) -> None:
    before = triton_server.metric("moonpipe_requests_total", finish_reason="cancelled")
    stream = moondream.stream()
    try:
        stream.send(build_inputs("caption", sample_image_bytes, **LONG))
        first = [stream.replies.get(timeout=60) for _ in range(3)]
        assert all(r.error is None and not r.final for r in first), first
    finally:
        stream.close(cancel=True)

    wait_until_idle(triton_server, before)
    assert "finish=cancelled" in triton_server.log_text()


def test_disconnect_mid_stream_ends_the_request_and_frees_its_pages(
        triton_server: ServerHandle, sample_image_bytes: bytes, tmp_path: Path) -> None:
    before = triton_server.metric("moonpipe_requests_total", finish_reason="cancelled")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from conftest import Stream, build_inputs
        stream = Stream({triton_server.grpc_url!r})
        image = open(sys.argv[1], "rb").read()
        stream.send(build_inputs("caption", image, **{LONG!r}))
        for _ in range(3):
            assert not stream.replies.get(timeout=60).final
        print("streaming", flush=True)
        time.sleep(60)
    """)
    image_path = tmp_path / "image.png"
    image_path.write_bytes(sample_image_bytes)
    client = subprocess.Popen([sys.executable, "-c", script, str(image_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "streaming"
    finally:
        client.kill()  # no goodbye: the connection just drops
        client.wait(timeout=10)

    wait_until_idle(triton_server, before)


def test_server_keeps_serving_after_cancellations(moondream: Caller, sample_image_bytes: bytes) -> None:
    replies = moondream.run("caption", sample_image_bytes, stream=True, max_tokens=5)
    assert replies[-1].error is None and replies[-1].final
