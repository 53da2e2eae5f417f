"""point / detect constraints: spatial specs, decisions, object caps, box clamping."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.config import TokenizerConfig
from moonpipe.request import Box, FinishReason, Point, Request
from moonpipe.skills import SkillSet
from moonpipe.skills.spatial import box_from_centre
from moonpipe.step import Feed, Spatial, StepOutput

sys.path.insert(0, str(Path(__file__).parent))
from engine_support import GOLDEN_DIR
from test_skills_tokenizer import build_test_tokenizer

CFG = TokenizerConfig()
IMAGE = b"\x89PNG fake"
GOLDEN = GOLDEN_DIR / "golden.json"


def _constraint(request: Request):  # type: ignore[no-untyped-def]
    skills = SkillSet(build_test_tokenizer(), CFG)
    index = {m.name: i + 1 for i, m in enumerate(skills.vocab_masks)}
    return skills.make_constraint(request, index, max_prompt_tokens=512)


@pytest.mark.parametrize("skill", ["point", "detect"])
def test_prompt_puts_a_space_before_the_object(skill: str) -> None:
    c = _constraint(Request("r", skill, IMAGE, prompt="red cup"))
    t = CFG.templates[skill]
    assert c.prompt_ids == [*t["prefix"], *build_test_tokenizer().encode(" red cup"), *t["suffix"]]


def test_point_specs_are_greedy_unmasked_coordinates() -> None:
    c = _constraint(Request("r", "point", IMAGE, prompt="cup"))
    for k in range(6):
        s = c.spec(k)
        assert s is not None
        assert (s.feed, s.spatial, s.mask, s.banned_ids, s.greedy) == (Feed.COORD, Spatial.COORD, 0, (), True)


def test_detect_specs_cycle_coord_coord_size() -> None:
    c = _constraint(Request("r", "detect", IMAGE, prompt="cup"))
    kinds = [(c.spec(k).feed, c.spec(k).spatial) for k in range(6)]  # type: ignore[union-attr]
    coord, size = (Feed.COORD, Spatial.COORD), (Feed.SIZE, Spatial.SIZE)
    assert kinds == [coord, coord, size] * 2
    assert all(c.spec(k).greedy and c.spec(k).mask == 0 for k in range(6))  # type: ignore[union-attr]


def test_point_emits_pairs_and_stops_on_eos_decision() -> None:
    c = _constraint(Request("r", "point", IMAGE, prompt="cup"))
    assert c.advance(StepOutput(token=77, coord=0.25)).points == []
    a = c.advance(StepOutput(token=0, coord=0.5))  # the token of a y step is not a decision
    assert a.points == [Point(0.25, 0.5)] and a.finish_reason is None
    a = c.advance(StepOutput(token=CFG.eos_id, coord=0.9))
    assert a.points == [] and a.finish_reason == FinishReason.STOP


def test_eos_at_prefill_means_no_objects() -> None:
    for skill in ("point", "detect"):
        c = _constraint(Request("r", skill, IMAGE, prompt="cup"))
        a = c.advance(StepOutput(token=CFG.eos_id, coord=0.3))
        assert a.finish_reason == FinishReason.STOP and not a.points and not a.boxes


def test_point_max_objects_ends_with_length_after_the_last_point() -> None:
    c = _constraint(Request("r", "point", IMAGE, prompt="cup", max_objects=2))
    outs = [c.advance(StepOutput(token=50, coord=v / 8)) for v in range(4)]
    assert [p for a in outs for p in a.points] == [Point(0.0, 0.125), Point(0.25, 0.375)]
    assert [a.finish_reason for a in outs] == [None, None, None, FinishReason.LENGTH]


def test_detect_box_from_centre_and_size() -> None:
    c = _constraint(Request("r", "detect", IMAGE, prompt="cup"))
    c.advance(StepOutput(token=50, coord=0.5))
    c.advance(StepOutput(token=50, coord=0.25))
    a = c.advance(StepOutput(token=50, size=(0.25, 0.5)))
    assert a.boxes == [Box(0.375, 0.0, 0.625, 0.5)] and a.finish_reason is None


def test_box_is_clamped_to_the_image() -> None:
    assert box_from_centre(0.05, 0.9, 0.5, 0.5) == Box(0.0, 0.65, 0.3, 1.0)
    assert box_from_centre(0.5, 0.5, 1.0, 1.0) == Box(0.0, 0.0, 1.0, 1.0)


def test_detect_reproduces_the_reference_boxes() -> None:
    g = json.loads(GOLDEN.read_text())["detect"]
    c = _constraint(Request("r", "detect", IMAGE, prompt="cup", max_objects=g["settings"]["max_objects"]))
    boxes, reason = [], None
    for i, size in enumerate(g["sizes"]):
        x, y = g["coords"][2 * i]["value"], g["coords"][2 * i + 1]["value"]
        for out in (StepOutput(token=g["decisions"][i]["argmax"], coord=x), StepOutput(token=1, coord=y),
                    StepOutput(token=1, size=(size["w"], size["h"]))):
            a = c.advance(out)
            boxes += a.boxes
            reason = a.finish_reason
    assert reason == FinishReason.LENGTH  # golden stop_reason "max_objects"
    assert len(boxes) == g["n_objects"]
    for box, want in zip(boxes, g["objects"], strict=True):
        for key in ("x_min", "y_min", "x_max", "y_max"):
            assert getattr(box, key) == pytest.approx(want[key], abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    skill=st.sampled_from(["point", "detect"]),
    max_objects=st.integers(1, 6),
    max_tokens=st.integers(1, 30),
    outputs=st.lists(
        st.tuples(st.integers(0, 599), st.integers(0, 1023), st.integers(0, 1023), st.integers(0, 1023)),
        min_size=1, max_size=80,
    ),
)
def test_random_outputs_never_break_the_cycle(
    skill: str, max_objects: int, max_tokens: int, outputs: list[tuple[int, int, int, int]]
) -> None:
    c = _constraint(Request("r", skill, IMAGE, prompt="cup", max_objects=max_objects, max_tokens=max_tokens))
    objects = 0
    reason = None
    n = 0
    for k, (token, cbin, wbin, hbin) in enumerate(outputs):
        assert c.spec(k) is not None and c.spec(k + 1) is not None
        size = (2 ** (wbin / 1023 * 10 - 10), 2 ** (hbin / 1023 * 10 - 10))
        a = c.advance(StepOutput(token=token, coord=cbin / 1024, size=size))
        n += 1
        objects += len(a.points) + len(a.boxes)
        for b in a.boxes:
            assert 0.0 <= b.x_min <= b.x_max <= 1.0 and 0.0 <= b.y_min <= b.y_max <= 1.0
        if a.finish_reason is not None:
            reason = a.finish_reason
            break
    assert objects <= max_objects and n <= max_tokens
    if reason == FinishReason.LENGTH:
        assert objects == max_objects or n == max_tokens
    if reason is None:
        assert n == len(outputs)
