"""The REST path of ``moonpipe bench triton --rest``: the gateway beside the bench's server.

:func:`running_gateway` starts ``python -m moonpipe_gateway`` (its own process, as in a
deployment) in front of the bench's tritonserver; :func:`run_over_rest` drives it closed
loop with streamed Moondream ``/v1/caption`` requests from one asyncio loop (aiohttp, the
HTTP client tritonclient[http] already brings), stamping every SSE ``chunk`` event and
the final ``completed`` event (whose ``usage`` gives the token count) into the same
:class:`~moonpipe.bench.latency.Trace` the other paths fill. The gateway's own CPU time
(:meth:`RunningGateway.cpu_seconds`) gives its cost per token, a steadier measure than
the throughput ratio on shared cores.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moonpipe.bench.latency import Trace
from moonpipe.bench.load import RequestSpec, closed_loop
from moonpipe.triton_local import free_port

__all__ = ["RunningGateway", "run_over_rest", "running_gateway"]


@dataclass(frozen=True, slots=True)
class RunningGateway:
    """A gateway process: ``url`` is its base URL (``http://127.0.0.1:PORT``)."""

    url: str
    pid: int

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds the process has used, all threads (None without /proc)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in ticks


@contextlib.contextmanager
def running_gateway(triton_url: str, log_path: Path, timeout: float = 60.0) -> Iterator[RunningGateway]:
    """The gateway while it runs; stopped on exit."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moonpipe_gateway", "--port", str(port),
                                 "--triton-url", triton_url, "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _ready(f"{url}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the REST gateway did not start: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield RunningGateway(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):  # not listening yet, or Triton not ready (503)
        return False


def _body(spec: RequestSpec, image_url: str) -> dict[str, Any]:
    if spec.skill != "caption" or not spec.stream:
        raise ValueError("the REST bench path streams captions only")
    settings: dict[str, Any] = {}
    if spec.max_tokens is not None:
        settings["max_tokens"] = spec.max_tokens
    if spec.temperature is not None:
        settings["temperature"] = spec.temperature
    return {"image_url": image_url, "length": spec.length, "stream": True, "settings": settings}


async def _one(session: Any, url: str, body: dict[str, Any], trace: Trace) -> None:
    trace.start = time.perf_counter()
    async with session.post(f"{url}/v1/caption", json=body) as resp:
        if resp.status != 200:
            trace.end = time.perf_counter()
            trace.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            return
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            now = time.perf_counter()
            if event.get("chunk"):
                trace.chunk_times.append(now)
            if event.get("completed"):
                trace.end = now
                trace.num_output_tokens = int(event.get("usage", {}).get("completion_tokens", 0))
                trace.finish_reason = str(event.get("finish_reason", ""))
                return
    trace.end = time.perf_counter()
    trace.error = "the stream ended without its completed event"


async def _rest_main(url: str, specs: Sequence[RequestSpec], concurrency: int, timeout: float) -> list[Trace]:
    import aiohttp

    uris = {spec.image: "data:image/jpeg;base64," + base64.b64encode(spec.image).decode() for spec in specs}
    traces = [Trace(start=0.0) for _ in specs]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async def one(i: int) -> None:
            try:
                await _one(session, url, _body(specs[i], uris[specs[i].image]), traces[i])
            except aiohttp.ClientError as exc:
                traces[i].end = time.perf_counter()
                traces[i].error = f"{type(exc).__name__}: {exc}"

        await closed_loop(len(specs), concurrency, one, timeout)
    return traces


def run_over_rest(url: str, specs: Sequence[RequestSpec], concurrency: int, *,
                  timeout: float = 600.0) -> list[Trace]:
    """Run ``specs`` (streamed captions) through the gateway at ``url`` with ``concurrency`` in flight."""
    if not specs:
        return []
    return asyncio.run(_rest_main(url, specs, concurrency, timeout))
