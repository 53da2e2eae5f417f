"""The first end-to-end path: a caption streamed over gRPC from the real tritonserver."""

from __future__ import annotations

import urllib.request

import pytest
from conftest import Caller, ServerHandle
from reliability.support import compute_worker_pids

pytestmark = pytest.mark.e2e


def test_server_is_ready_with_the_moondream_model(triton_server: ServerHandle) -> None:
    for path in ("/v2/health/ready", "/v2/models/moondream/ready"):
        with urllib.request.urlopen(triton_server.http_url + path, timeout=5) as resp:
            assert resp.status == 200


def test_cpu_server_runs_its_compute_worker_as_a_process(triton_server: ServerHandle) -> None:
    """config.pbtxt asks for cpu_worker=process: the engine's forwards run in a child of
    the Python stub (a fork-server worker), not on a thread that shares the stub's GIL."""
    assert "cpu_worker='process'" in triton_server.log_text()
    pid = triton_server.server.pid
    assert pid is not None and compute_worker_pids(pid), "no compute worker process under the server"


def test_caption_streams_several_responses_then_a_final_one(
        moondream: Caller, sample_image_bytes: bytes) -> None:
    # Sampled near-uniformly (temperature 5, top_p 1) the tiny model practically never picks
    # eos, so the answer has its 12 tokens; at the default settings it may stop after one
    # or two, depending on what the session's shared sampler drew before.
    replies = moondream.run("caption", sample_image_bytes, stream=True, max_tokens=12, temperature=5.0,
                            top_p=1.0)

    assert all(r.error is None for r in replies), replies[-1].error
    assert len(replies) >= 3  # several streamed responses, not one blob
    assert [r.final for r in replies] == [False] * (len(replies) - 1) + [True]
    # they arrived one by one, not all at once at the end
    assert replies[-1].arrived > replies[0].arrived
    final = replies[-1]
    assert final.scalar("FINISH_REASON") in ("stop", "length")
    assert final.scalar("NUM_INPUT_TOKENS") > 0
    text = "".join(r.text() for r in replies)
    assert text.strip()
    assert final.scalar("NUM_OUTPUT_TOKENS") >= len(replies) - 1


def test_non_streaming_caption_is_one_final_response_with_the_whole_text(
        moondream: Caller, sample_image_bytes: bytes) -> None:
    streamed = moondream.run("caption", sample_image_bytes, stream=True, max_tokens=12, temperature=0.0)
    whole = moondream.run("caption", sample_image_bytes, stream=False, max_tokens=12, temperature=0.0)

    assert len(whole) == 1 and whole[0].final and whole[0].error is None
    # greedy (temperature 0) caption of the same image: the streamed deltas add up to the whole text
    assert whole[0].text() == "".join(r.text() for r in streamed)
    assert whole[0].scalar("NUM_OUTPUT_TOKENS") == streamed[-1].scalar("NUM_OUTPUT_TOKENS")
