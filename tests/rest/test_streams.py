"""Many concurrent streams through the gateway, and clients that leave mid-request."""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import moondream as md
import pytest
from conftest import ServerHandle, wait_until_idle
from moondream.types import Base64EncodedImage

from rest.conftest import GatewayProcess

pytestmark = pytest.mark.e2e

# A caption that runs for seconds on the synthetic checkpoint: sampled from a nearly flat
# distribution (eos about as likely as any of 32768 tokens), it fills its context (~1300
# tokens) instead of stopping (temperature 1 with top_p 0.3 stops after ~60).
LONG = {"max_tokens": 2000, "temperature": 5.0, "top_p": 1.0}


def test_64_concurrent_streams(gateway: GatewayProcess, image_uri: str) -> None:
    route_before = gateway.requests("/v1/caption", 200)
    image = Base64EncodedImage(image_url=image_uri)

    def one(n: int) -> str:
        vl = md.vl(endpoint=gateway.endpoint)
        settings = {**LONG, "max_tokens": 8}  # never an empty caption (eos first)
        return "".join(vl.caption(image, stream=True, settings=settings)["caption"])

    with ThreadPoolExecutor(max_workers=64) as pool:
        texts = list(pool.map(one, range(64), timeout=300))
    assert len(texts) == 64 and all(texts)
    assert gateway.requests("/v1/caption", 200) == route_before + 64


def _connect(gateway: GatewayProcess, route: str, body: dict[str, Any]) -> http.client.HTTPConnection:
    parts = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    conn.request("POST", route, json.dumps(body), {"Content-Type": "application/json"})
    return conn


def _drop(conn: http.client.HTTPConnection) -> None:
    """Close the socket at once: no goodbye, the connection just drops."""
    assert conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def _wait_for_status(gateway: GatewayProcess, route: str, status: int, before: float) -> None:
    deadline = time.monotonic() + 10
    while gateway.requests(route, status) < before + 1:
        assert time.monotonic() < deadline, f"the gateway never recorded {status} on {route}"
        time.sleep(0.1)


def test_disconnect_mid_stream_cancels_the_request_and_frees_its_pages(
        gateway: GatewayProcess, triton_server: ServerHandle, image_uri: str) -> None:
    cancelled = triton_server.metric("moonpipe_requests_total", finish_reason="cancelled")
    gone = gateway.requests("/v1/caption", 499)
    conn = _connect(gateway, "/v1/caption", {"image_url": image_uri, "stream": True, "settings": LONG})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream")
    events = 0
    while events < 3:
        line = response.fp.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: "):
            assert json.loads(line[6:])["completed"] is False
            events += 1
    _drop(conn)
    wait_until_idle(triton_server, cancelled)
    _wait_for_status(gateway, "/v1/caption", 499, gone)


def test_disconnect_while_waiting_for_a_whole_answer_cancels_it(
        gateway: GatewayProcess, triton_server: ServerHandle, image_uri: str) -> None:
    cancelled = triton_server.metric("moonpipe_requests_total", finish_reason="cancelled")
    gone = gateway.requests("/v1/caption", 499)
    conn = _connect(gateway, "/v1/caption", {"image_url": image_uri, "settings": LONG})
    deadline = time.monotonic() + 30
    while triton_server.metric("moonpipe_running_sequences") < 1:
        assert time.monotonic() < deadline, (f"the request never started running\n{triton_server.server.log_tail(8)}"
                                             f"\n{gateway.log_text()[-2000:]}")
        time.sleep(0.05)
    _drop(conn)
    wait_until_idle(triton_server, cancelled)
    _wait_for_status(gateway, "/v1/caption", 499, gone)
