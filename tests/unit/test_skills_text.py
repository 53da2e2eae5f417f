"""caption / query constraints: prompts, specs per output, stop and length."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.config import TokenizerConfig
from moonpipe.request import FinishReason, Request
from moonpipe.skills import SkillSet
from moonpipe.step import Feed, Spatial, StepOutput

sys.path.insert(0, str(Path(__file__).parent))
from test_skills_tokenizer import build_test_tokenizer

CFG = TokenizerConfig()
IMAGE = b"\x89PNG fake"


def _skills() -> SkillSet:
    return SkillSet(build_test_tokenizer(), CFG)


def _index(skills: SkillSet) -> dict[str, int]:
    return {m.name: i + 1 for i, m in enumerate(skills.vocab_masks)}


def _constraint(request: Request):  # type: ignore[no-untyped-def]
    skills = _skills()
    return skills.make_constraint(request, _index(skills), max_prompt_tokens=512)


def test_caption_prompt_follows_the_length_template() -> None:
    for length in ("short", "normal", "long"):
        c = _constraint(Request("r", "caption", IMAGE, length=length))
        assert c.prompt_ids == CFG.templates["caption"][length]


def test_query_prompt_has_no_leading_space_and_a_doubled_suffix() -> None:
    tok = build_test_tokenizer()
    c = _constraint(Request("r", "query", IMAGE, prompt="What color is the car?"))
    assert c.prompt_ids == [1, 15381, 2, *tok.encode("What color is the car?"), 3, 3]


def test_first_output_is_unmasked_and_later_outputs_ban_answer_id() -> None:
    c = _constraint(Request("r", "caption", IMAGE))
    first = c.spec(0)
    assert first is not None
    assert (first.feed, first.spatial, first.mask, first.banned_ids) == (Feed.TOKEN, Spatial.NONE, 0, ())
    for k in (1, 2, 50):
        spec = c.spec(k)
        assert spec is not None and spec.banned_ids == (CFG.answer_id,) and spec.mask == 0
        assert spec.feed == Feed.TOKEN and spec.spatial == Spatial.NONE
        assert spec is c.spec(k + 1)  # cached, no per-call allocation
    assert not first.greedy  # default temperature 0.5 samples


def test_temperature_zero_is_greedy() -> None:
    c = _constraint(Request("r", "query", IMAGE, prompt="hi", temperature=0.0))
    assert c.spec(0).greedy and c.spec(1).greedy  # type: ignore[union-attr]


def test_eos_stops_without_being_emitted() -> None:
    c = _constraint(Request("r", "caption", IMAGE))
    a = c.advance(StepOutput(token=42))
    assert a.token_ids == [42] and a.finish_reason is None
    a = c.advance(StepOutput(token=CFG.eos_id))
    assert a.token_ids == [] and a.finish_reason == FinishReason.STOP


def test_max_tokens_ends_with_length_after_emitting_the_last_token() -> None:
    c = _constraint(Request("r", "caption", IMAGE, max_tokens=3))
    reasons = [c.advance(StepOutput(token=t)) for t in (11, 12, 13)]
    assert [a.token_ids for a in reasons] == [[11], [12], [13]]
    assert [a.finish_reason for a in reasons] == [None, None, FinishReason.LENGTH]


@settings(max_examples=200, deadline=None)
@given(
    max_tokens=st.integers(1, 40),
    tokens=st.lists(st.integers(0, 599), min_size=1, max_size=60),
)
def test_any_token_sequence_ends_properly(max_tokens: int, tokens: list[int]) -> None:
    c = _constraint(Request("r", "query", IMAGE, prompt="q?", max_tokens=max_tokens))
    tokens = tokens[:1] + [t for t in tokens[1:] if t != CFG.answer_id]  # banned after k = 0
    emitted: list[int] = []
    reason = None
    for k, t in enumerate(tokens):
        spec = c.spec(k)
        assert spec is not None and (k == 0 or t not in spec.banned_ids)
        a = c.advance(StepOutput(token=t))
        emitted += a.token_ids
        if a.finish_reason is not None:
            reason = a.finish_reason
            break
    assert len(emitted) <= max_tokens
    assert CFG.eos_id not in emitted
    if reason == FinishReason.LENGTH:
        assert len(emitted) == max_tokens
