"""Shutting tritonserver down (SIGTERM, as Kubernetes and ``docker stop`` do) mid-load.

What Triton 2.51 does (measured, see docs/limits.md): on SIGTERM it closes the HTTP
endpoint at once, refuses new gRPC requests ("... has no available versions"; not
asserted here: the race with the signal is real) and then
waits up to ``--exit-timeout-secs`` (5 s under ``moonpipe.triton_local``) for the model to
unload. A decoupled model unloads only after every open request got its FINAL response
(each request's response factory holds the model), and the adapter's ``finalize`` runs
only after that. Left alone, a request longer than the exit timeout would keep the model
loaded: Triton then gives up ("Exit timeout expired. Exiting immediately."), crashes
during exit (SIGSEGV) and hangs with the streams open. So the adapter watches for the
signal itself (``moondream_signals.StopSignalWatch``): it stops accepting, lets in-flight
requests finish for ``shutdown_drain_s`` and ends the rest with ``UNAVAILABLE``.

* Requests that fit in the drain time end with their normal final response and the
  server exits 0 (first test).
* Requests that do not fit end with ``UNAVAILABLE: the server is shutting down`` and the
  server exits 0 (second test).
* Clients that leave right after their final response do not keep the model loaded, as
  long as they let the server end the call first (third test; docs/limits.md).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest

from reliability.conftest import Target
from reliability.support import (
    CHANNEL_OPTIONS,
    MODEL,
    OpenStream,
    base_inputs,
    cmdline,
    compute_worker_pids,
    engine_gauges,
    group_pids,
    picture,
    run_raw,
    wait_until,
)

pytestmark = pytest.mark.reliability

PARAMETERS = {"max_batch_size": "4", "max_queue": "16", "stats_interval_ms": "100"}


def _kinds(streams: list[OpenStream]) -> Counter[str]:
    return Counter(s.kind() for s in streams)


def _wait_gauges(target: Target, running: int, queued: int) -> None:
    def ok() -> bool:
        g = engine_gauges(target.metrics_url)
        return g["moonpipe_running_sequences"] == running and g["moonpipe_queue_depth"] == queued

    wait_until(ok, timeout=20, what=f"{running} running and {queued} queued")


def test_sigterm_mid_load_drains_requests_that_fit_the_exit_timeout(fresh_server_factory: Any) -> None:
    target: Target = fresh_server_factory(PARAMETERS)
    pgid = target.pgid
    short: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0}  # drain + unload well inside 5 s
    with grpc.insecure_channel(target.grpc_url, options=CHANNEL_OPTIONS) as channel:
        running = [OpenStream(channel, base_inputs("caption", picture(i), stream=True, **short)) for i in range(4)]
        for s in running:
            assert s.first.wait(60)
        queued = [OpenStream(channel, base_inputs("caption", picture(10 + i), stream=bool(i % 2), **short))
                  for i in range(2)]
        _wait_gauges(target, running=4, queued=2)
        workers = compute_worker_pids(target.server.pid)
        assert workers, "the server runs no compute worker process"

        os.kill(pgid, signal.SIGTERM)
        for s in running + queued:
            assert s.done.wait(30), f"a stream did not end: {s.kind()}"

    kinds = _kinds(running + queued)
    print(f"\nSIGTERM, short requests: {dict(kinds)}")
    assert set(kinds) <= {"final:length", "final:stop"}, kinds
    wait_until(lambda: not target.server.running(), timeout=30, what="tritonserver to exit")
    assert target.server.stop() == 0, target.log_tail()
    assert not group_pids(pgid), "a stub process outlived the server"
    wait_until(lambda: not any(b"forkserver" in cmdline(p) for p in workers),
               timeout=10, what="the compute worker to exit")
    assert "moonpipe: finalized" in target.log_text()


def test_sigterm_mid_load_ends_every_open_stream_even_long_ones(fresh_server_factory: Any) -> None:
    target: Target = fresh_server_factory(PARAMETERS)
    pgid = target.pgid
    long: dict[str, Any] = {"stream": True, "max_tokens": 1000, "temperature": 1.0}
    try:
        with grpc.insecure_channel(target.grpc_url, options=CHANNEL_OPTIONS) as channel:
            running = [OpenStream(channel, base_inputs("caption", picture(i), **long)) for i in range(4)]
            for s in running:
                assert s.first.wait(60)
            queued = [OpenStream(channel, base_inputs("caption", picture(10 + i), **long)) for i in range(4)]
            _wait_gauges(target, running=4, queued=4)

            # To the process group, as the container entrypoint forwards docker's / the
            # kubelet's SIGTERM: the stub must see it to end what cannot drain in time.
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 15.0  # three exit timeouts
            for s in running + queued:
                s.done.wait(max(0.0, deadline - time.monotonic()))
            kinds = _kinds(running + queued)
            alive = target.server.running()
            print(f"\nSIGTERM, long requests, 15 s later: streams {dict(kinds)}, server alive: {alive}")
            assert "open" not in kinds, f"streams still open 15 s after SIGTERM: {dict(kinds)}"
            assert set(kinds) <= {"error", "final:length", "final:stop"}, kinds
            for s in running + queued:
                if s.outcome.error is not None:
                    assert "UNAVAILABLE" in s.outcome.error, s.outcome.error
            wait_until(lambda: not target.server.running(), timeout=15, what="tritonserver to exit")
            assert target.server.stop() == 0, target.log_tail()
            assert "moonpipe: finalized" in target.log_text()
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)  # never leave a hung server behind


def test_clients_that_leave_at_the_final_response_do_not_keep_the_model_loaded(fresh_server_factory: Any) -> None:
    """Triton 2.51 keeps a model loaded (its shutdown then waits out the exit timeout and
    exits 1, with no ``finalize``) if a client cancels its gRPC call at the moment the
    server ends it, right after the final response; in our runs 3 of 8 shutdowns after 12
    such clients. moonpipe_client and tritonclient's ``stop_stream`` let the server end the
    call first, so a server that only ever saw them stops cleanly."""
    from moonpipe_client import Client
    from tritonclient.grpc import InferenceServerClient, InferInput

    target: Target = fresh_server_factory(PARAMETERS)
    with Client(target.grpc_url, timeout=60) as client:  # leaves (closes) right after each final
        for i in range(4):
            client.caption(picture(i), max_tokens=2)
            with client.caption(picture(10 + i), stream=True, max_tokens=2) as stream:
                for _ in stream:
                    pass
            client.point(picture(20 + i), "cat", max_objects=1)
    for i in range(4):
        assert run_raw(target.grpc_url, base_inputs("caption", picture(30 + i), max_tokens=2)).final
    finals: queue.Queue[Any] = queue.Queue()
    triton = InferenceServerClient(target.grpc_url)
    triton.start_stream(callback=lambda result, error: finals.put(error or result))
    image = InferInput("IMAGE", [1], "BYTES")
    for i in range(4):
        image.set_data_from_numpy(np.array([picture(40 + i)], dtype=np.object_))
        skill = InferInput("SKILL", [1], "BYTES")
        skill.set_data_from_numpy(np.array([b"caption"], dtype=np.object_))
        max_tokens = InferInput("MAX_TOKENS", [1], "INT32")
        max_tokens.set_data_from_numpy(np.array([2], dtype=np.int32))
        triton.async_stream_infer(MODEL, [skill, image, max_tokens])
        reply = finals.get(timeout=60)
        assert not isinstance(reply, Exception), reply
    triton.stop_stream()  # waits for the server to end the stream
    triton.close()

    os.killpg(target.pgid, signal.SIGTERM)
    wait_until(lambda: not target.server.running(), timeout=30, what="tritonserver to exit")
    assert target.server.stop() == 0, target.log_tail()
    assert "moonpipe: finalized" in target.log_text()
