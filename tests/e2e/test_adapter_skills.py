"""Every skill through the real server, streaming and not, and several clients at once."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from conftest import Caller, Reply

pytestmark = pytest.mark.e2e

# (skill, prompt, settings): small limits keep the suite fast on 2 CPU cores
CASES = [
    ("caption", None, {"length": "short", "max_tokens": 10}),
    ("query", "What color is the ball?", {"max_tokens": 10}),
    ("point", "ball", {"max_objects": 3, "max_tokens": 24}),
    ("detect", "ball", {"max_objects": 3, "max_tokens": 24}),
    ("segment", "ball", {"max_tokens": 40}),
]


def _merged(replies: list[Reply]) -> tuple[str, np.ndarray, np.ndarray]:
    text = "".join(r.text() for r in replies)
    points = np.concatenate([r.outputs["POINTS"] for r in replies]).reshape(-1, 2)
    boxes = np.concatenate([r.outputs["BOXES"] for r in replies]).reshape(-1, 4)
    return text, points, boxes


@pytest.mark.parametrize(("skill", "prompt", "settings"), CASES, ids=[c[0] for c in CASES])
def test_skill_streaming_and_not_give_the_same_result(
        moondream: Caller, sample_image_bytes: bytes, skill: str, prompt: str | None,
        settings: dict[str, Any]) -> None:
    whole = moondream.run(skill, sample_image_bytes, prompt, stream=False, temperature=0.0, **settings)
    streamed = moondream.run(skill, sample_image_bytes, prompt, stream=True, temperature=0.0, **settings)

    for replies in (whole, streamed):
        assert replies[-1].error is None, replies[-1].error
        assert replies[-1].final and not any(r.final for r in replies[:-1])
        final = replies[-1]
        assert final.scalar("FINISH_REASON") in ("stop", "length")
        assert final.scalar("NUM_INPUT_TOKENS") > 0
        assert 0 < final.scalar("NUM_OUTPUT_TOKENS") <= int(settings["max_tokens"])
        assert "FINISH_REASON" not in replies[0].outputs or len(replies) == 1
    assert len(whole) == 1

    text, points, boxes = _merged(whole)
    s_text, s_points, s_boxes = _merged(streamed)
    assert s_text == text
    np.testing.assert_array_equal(s_points, points)
    np.testing.assert_array_equal(s_boxes, boxes)
    assert streamed[-1].scalar("SVG_PATH") == whole[0].scalar("SVG_PATH")
    assert np.all((points >= 0) & (points <= 1)) and np.all((boxes >= 0) & (boxes <= 1))
    if skill in ("caption", "query"):
        assert text.strip()
        assert len(streamed) >= 2  # text streams token by token
    if skill in ("point", "detect"):
        assert len(points if skill == "point" else boxes) <= int(settings["max_objects"])
        assert not text
    if skill == "segment":
        assert isinstance(whole[0].scalar("SVG_PATH"), str)


def test_concurrent_requests_from_several_clients_each_get_their_own_answer(
        moondream: Caller, sample_image_bytes: bytes) -> None:
    results: dict[int, list[Reply]] = {}
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            # distinct limits per client, so a mixed-up response would show
            results[index] = moondream.run("caption", sample_image_bytes, stream=index % 2 == 0,
                                           max_tokens=4 + index, temperature=0.0, timeout=120)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    assert sorted(results) == list(range(6))
    for index, replies in results.items():
        final = replies[-1]
        assert final.error is None and final.final
        reason = final.scalar("FINISH_REASON")
        assert reason in ("stop", "length")
        if reason == "length":
            assert final.scalar("NUM_OUTPUT_TOKENS") == 4 + index
        assert "".join(r.text() for r in replies).strip()
