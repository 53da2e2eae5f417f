"""Cancellation storm: hundreds of requests cancelled or disconnected at random points
while others run. The others complete correctly (greedy ones exactly as when run alone),
nothing leaks (pages, sequences, queue back to zero), and the stub never crashes.

Ways a request is abandoned (all against the session's shared server):

* ``before-first``: a raw gRPC stream cancelled 0-30 ms after it opened (before the request
  reached the server, while it waits in the queue, or during its prefill);
* ``mid-stream``: a long sampled streaming caption, cancelled after 1-15 streamed items,
  half through the client's early ``aclose()``, half through a raw ``call.cancel()``;
* ``near-end``: a streaming caption with ``max_tokens`` 2 or 3, cancelled as soon as its
  first item arrives, so the cancel races the last token and the final response;
* ``channel-close``: a second ``AsyncClient`` closed while its streams are running;
* ``killed``: client subprocesses killed with SIGKILL mid-stream (the connection drops).
"""

from __future__ import annotations

import asyncio
import random
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

from reliability.conftest import Target
from reliability.support import (
    CHANNEL_OPTIONS,
    Outcome,
    base_inputs,
    build_request,
    engine_gauges,
    http_get,
    metric_value,
    model_ready,
    picture,
    read_message,
    stub_pids,
    wait_idle,
)

pytestmark = pytest.mark.reliability

COUNTS = {"complete": 40, "before-first": 80, "mid-stream": 70, "near-end": 30, "channel-close": 10,
          "killed": 30}
KILLED_PROCESSES = 3
STORM_TIMEOUT_S = 150.0
LONG: dict[str, Any] = {"max_tokens": 1000, "temperature": 1.0}  # practically never ends early

_KILLED_CLIENT = textwrap.dedent("""
    import asyncio, sys
    from moonpipe_client import AsyncClient

    async def main(url: str, path: str, n: int) -> None:
        image = open(path, "rb").read()
        async with AsyncClient(url, timeout=300) as client:
            streams = [client.caption(image, stream=True, max_tokens=1000, temperature=1.0) for _ in range(n)]

            async def first(stream):
                async for _ in stream:
                    return

            await asyncio.gather(*(first(s) for s in streams))
            print("streaming", flush=True)
            await asyncio.sleep(300)  # killed long before

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


def _greedy_calls(images: list[bytes]) -> list[tuple[str, Callable[[Any], Awaitable[Any]]]]:
    """Greedy requests with a deterministic answer: (name, call on an AsyncClient)."""
    a, b = images[0], images[1]
    return [
        ("query", lambda c: c.query(a, "what is on the table?", max_tokens=24, temperature=0.0)),
        ("caption", lambda c: c.caption(b, "short", max_tokens=24, temperature=0.0)),
        ("point", lambda c: c.point(a, "red ball", max_objects=8)),
        ("detect", lambda c: c.detect(b, "table", max_objects=8)),
    ]


async def _raw_call(stub: Any, inputs: list[Any]) -> Any:
    return stub.ModelStreamInfer(iter([build_request(inputs)]), timeout=STORM_TIMEOUT_S)


async def _before_first(stub: Any, image: bytes, rng: random.Random) -> str:
    call = await _raw_call(stub, base_inputs("caption", image, stream=True, **LONG))
    await asyncio.sleep(rng.uniform(0.0, 0.03))
    call.cancel()
    return "cancelled"


async def _raw_mid_stream(stub: Any, image: bytes, items: int) -> str:
    call = await _raw_call(stub, base_inputs("caption", image, stream=True, **LONG))
    outcome = Outcome()
    try:
        while len(outcome.responses) < items:
            message = await call.read()
            if message is grpc.aio.EOF:
                return "eof"
            read_message(outcome, message)
            if outcome.error is not None or outcome.final:
                return f"ended early: {outcome.error or outcome.last('FINISH_REASON')}"
        return "cancelled"
    finally:
        call.cancel()


async def _client_mid_stream(client: Any, image: bytes, items: int) -> str:
    stream = client.caption(image, stream=True, **LONG)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen >= items:
            break
    ended = stream.result is not None
    await stream.aclose()
    return f"ended early: {stream.result.finish_reason}" if ended else "cancelled"


async def _near_end(client: Any, image: bytes, max_tokens: int) -> str:
    stream = client.caption(image, stream=True, max_tokens=max_tokens, temperature=1.0)
    async for _ in stream:
        break
    ended = stream.result is not None
    await stream.aclose()
    return "finished" if ended else "cancelled"


async def _channel_close(url: str, image: bytes, n: int) -> list[str]:
    from moonpipe_client import AsyncClient

    client = AsyncClient(url, timeout=STORM_TIMEOUT_S)
    streams = [client.caption(image, stream=True, **LONG) for _ in range(n)]

    async def first(stream: Any) -> None:
        async for _ in stream:
            return

    await asyncio.gather(*(first(s) for s in streams))
    await client.close()  # every running call on the channel is dropped at once
    return ["closed"] * n


async def _killed(url: str, image_path: Path, n: int) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_CLIENT, url, str(image_path), str(n),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=90)
        assert line.strip() == b"streaming", f"client subprocess did not stream: {line!r}"
    finally:
        proc.kill()  # no goodbye: its TCP connection just drops
        await asyncio.wait_for(proc.wait(), timeout=20)
    return ["killed"] * n


async def _storm(url: str, images: list[bytes], image_path: Path, seed: int) -> dict[str, list[Any]]:
    from moonpipe_client import AsyncClient

    rng = random.Random(seed)
    results: dict[str, list[Any]] = {kind: [] for kind in COUNTS}
    greedy = _greedy_calls(images)
    async with AsyncClient(url, timeout=STORM_TIMEOUT_S) as client, \
            grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def jittered(kind: str, make: Callable[[], Awaitable[Any]]) -> None:
            await asyncio.sleep(rng.uniform(0.0, 4.0))  # spread the storm over a few seconds
            outcome = await make()
            results[kind].extend(outcome if isinstance(outcome, list) else [outcome])

        jobs: list[Awaitable[None]] = []
        for i in range(COUNTS["complete"]):
            name, call = greedy[i % len(greedy)]
            jobs.append(jittered("complete", partial(_complete, client, name, call)))
        for _ in range(COUNTS["before-first"]):
            jobs.append(jittered("before-first", partial(_before_first, stub, rng.choice(images), rng)))
        for i in range(COUNTS["mid-stream"]):
            image, items = rng.choice(images), rng.randint(1, 15)
            if i % 2:
                jobs.append(jittered("mid-stream", partial(_client_mid_stream, client, image, items)))
            else:
                jobs.append(jittered("mid-stream", partial(_raw_mid_stream, stub, image, items)))
        for _ in range(COUNTS["near-end"]):
            image, tokens = rng.choice(images), rng.choice((2, 3))
            jobs.append(jittered("near-end", partial(_near_end, client, image, tokens)))
        jobs.append(jittered("channel-close", partial(_channel_close, url, images[2], COUNTS["channel-close"])))
        per_process = COUNTS["killed"] // KILLED_PROCESSES
        for _ in range(KILLED_PROCESSES):
            jobs.append(jittered("killed", partial(_killed, url, image_path, per_process)))
        rng.shuffle(jobs)
        await asyncio.wait_for(asyncio.gather(*jobs), timeout=STORM_TIMEOUT_S)
    return results


async def _complete(client: Any, name: str, call: Callable[[Any], Awaitable[Any]]) -> tuple[str, Any]:
    return name, await call(client)


async def _references(url: str, images: list[bytes]) -> dict[str, Any]:
    """Each greedy request alone, one after the other (the reference answers)."""
    from moonpipe_client import AsyncClient

    out = {}
    async with AsyncClient(url, timeout=60) as client:
        for name, call in _greedy_calls(images):
            out[name] = await call(client)
    return out


def test_cancellation_storm_leaks_nothing_and_others_complete(target: Target, tmp_path: Path) -> None:
    images = [picture(seed) for seed in range(4)]
    image_path = tmp_path / "image.png"
    image_path.write_bytes(images[3])
    wait_idle(target.metrics_url)
    stubs = stub_pids(target.pgid)
    assert stubs
    status, before = http_get(target.metrics_url)
    assert status == 200
    references = asyncio.run(_references(target.grpc_url, images))

    started = time.monotonic()
    results = asyncio.run(_storm(target.grpc_url, images, image_path, seed=1234))
    elapsed = time.monotonic() - started

    tally = {kind: Counter(r if isinstance(r, str) else "completed" for r in rs) for kind, rs in results.items()}
    print(f"\ncancellation storm: {sum(COUNTS.values())} requests in {elapsed:.1f} s: {tally}")
    assert {k: len(v) for k, v in results.items()} == COUNTS, tally
    # Every request that was not abandoned completed with exactly its solo greedy answer.
    for name, result in results["complete"]:
        assert result == references[name], f"{name}: {result} != reference {references[name]}"
    # A long sampled caption rarely samples eos within 15 items; when it does, it ends normally.
    assert all(r == "cancelled" or r.startswith("ended early: ") for r in results["mid-stream"])
    assert tally["mid-stream"]["cancelled"] >= COUNTS["mid-stream"] * 0.8, tally["mid-stream"]

    gauges = wait_idle(target.metrics_url, timeout=60)
    assert gauges == dict.fromkeys(gauges, 0.0)
    assert model_ready(target.http_url)
    assert stub_pids(target.pgid) == stubs, "the stub process was replaced (it crashed)"
    status, after = http_get(target.metrics_url)
    assert status == 200

    def delta(**labels: str) -> float:
        return metric_value(after, "moonpipe_requests_total", **labels) - metric_value(
            before, "moonpipe_requests_total", **labels)

    # The server saw the cancellations: requests abandoned while streaming end there as
    # "cancelled" (or, if eos/the last token won the race, normally; never as errors).
    streaming_abandoned = tally["mid-stream"]["cancelled"] + COUNTS["channel-close"] + COUNTS["killed"]
    assert delta(finish_reason="cancelled") >= 0.8 * streaming_abandoned
    assert delta(finish_reason="error") == 0
    assert delta() <= sum(COUNTS.values()) + len(references)  # never two finals for one request
    log = target.log_text()
    assert "sender thread died" not in log and "scheduler thread crashed" not in log
    assert engine_gauges(target.metrics_url)["moonpipe_kv_pages_in_use"] == 0
