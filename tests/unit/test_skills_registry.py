"""The skill registry: factory, prompt limits, sampling defaults, masks, final outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moonpipe.config import TokenizerConfig
from moonpipe.errors import InvalidRequest
from moonpipe.request import Box, FinishReason, Point, Request
from moonpipe.skills import SkillSet, final_output, sampling_defaults, vocab_masks
from moonpipe.skills.detect import DetectConstraint
from moonpipe.skills.point import PointConstraint
from moonpipe.skills.segment import SegmentConstraint
from moonpipe.skills.text import TextConstraint

sys.path.insert(0, str(Path(__file__).parent))
from test_skills_tokenizer import build_test_tokenizer

CFG = TokenizerConfig()
IMAGE = b"\x89PNG fake"


@pytest.fixture(scope="module")
def skills() -> SkillSet:
    return SkillSet(build_test_tokenizer(), CFG)


def _index(skills: SkillSet) -> dict[str, int]:
    return {m.name: i + 1 for i, m in enumerate(skills.vocab_masks)}


@pytest.mark.parametrize(
    ("skill", "cls"),
    [("caption", TextConstraint), ("query", TextConstraint), ("point", PointConstraint),
     ("detect", DetectConstraint), ("segment", SegmentConstraint)],
)
def test_factory_picks_the_skill_class(skills: SkillSet, skill: str, cls: type) -> None:
    c = skills.make_constraint(Request("r", skill, IMAGE, prompt="cup"), _index(skills), max_prompt_tokens=64)
    assert isinstance(c, cls)
    assert all(isinstance(i, int) for i in c.prompt_ids)


def test_a_too_long_prompt_is_an_invalid_request(skills: SkillSet) -> None:
    req = Request("r", "query", IMAGE, prompt="what is this " * 50)
    with pytest.raises(InvalidRequest, match=r"^PROMPT: "):
        skills.make_constraint(req, _index(skills), max_prompt_tokens=32)


def test_masks_must_be_registered(skills: SkillSet) -> None:
    with pytest.raises(ValueError, match="not registered"):
        skills.make_constraint(Request("r", "segment", IMAGE, prompt="cup"), {}, max_prompt_tokens=64)


def test_vocab_masks_are_named_uniquely_and_valid(skills: SkillSet) -> None:
    masks = vocab_masks(build_test_tokenizer())
    assert [m.name for m in masks] == [m.name for m in skills.vocab_masks]
    assert len({m.name for m in masks}) == len(masks)
    vocab = build_test_tokenizer().vocab_size
    for m in masks:
        assert m.allowed_ids and list(m.allowed_ids) == sorted(set(m.allowed_ids))
        assert all(0 <= i < vocab for i in m.allowed_ids)
        assert not {CFG.answer_id, CFG.coord_id, CFG.size_id} & set(m.allowed_ids)


def test_sampling_defaults_follow_the_reference_and_the_request() -> None:
    assert sampling_defaults(Request("r", "caption", IMAGE)) == (0.5, 0.3, 768, 50)
    req = Request("r", "query", IMAGE, prompt="q", temperature=0.0, top_p=0.9, max_tokens=5, max_objects=3)
    assert sampling_defaults(req) == (0.0, 0.9, 5, 3)
    assert sampling_defaults(Request("r", "point", IMAGE, prompt="cup", temperature=1.0))[0] == 0.0


def test_final_output_decodes_text_and_passes_objects_through() -> None:
    tok = build_test_tokenizer()
    ids = tok.encode("A cat on a couch. Café 😀")
    out = final_output(Request("r", "caption", IMAGE), ids, [], [], FinishReason.STOP, tok)
    assert out.text == "A cat on a couch. Café 😀" and out.finish_reason == FinishReason.STOP
    out = final_output(Request("r", "point", IMAGE, prompt="cup"), [], [Point(0.1, 0.2)], [], FinishReason.LENGTH, tok)
    assert out.points == (Point(0.1, 0.2),) and out.text == "" and out.svg_path == ""
    box = Box(0.1, 0.2, 0.3, 0.4)
    out = final_output(Request("r", "detect", IMAGE, prompt="cup"), [], [], [box], FinishReason.STOP, tok)
    assert out.boxes == (box,)


def test_final_output_of_a_segment_cut_before_its_box() -> None:
    tok = build_test_tokenizer()
    out = final_output(Request("r", "segment", IMAGE, prompt="cup"), [], [], [], FinishReason.LENGTH, tok)
    assert out.finish_reason == FinishReason.LENGTH and out.boxes == () and out.svg_path == ""
