"""segment: box steps, the SVG path grammar masks, and the final path in the image."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.config import TokenizerConfig
from moonpipe.model.tokenizer import Tokenizer
from moonpipe.request import Box, FinishReason, Request
from moonpipe.skills import SkillSet, final_output
from moonpipe.skills.segment import SegmentConstraint
from moonpipe.skills.svg import parse_path
from moonpipe.step import Feed, Spatial, StepOutput

sys.path.insert(0, str(Path(__file__).parent))
from test_skills_tokenizer import build_test_tokenizer

CFG = TokenizerConfig()
EOS = CFG.eos_id
IMAGE = b"\x89PNG fake"


class Harness:
    """A SkillSet with its masks registered at rows 1..N, as the engine does."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.skills = SkillSet(tokenizer, CFG)
        self.index = {m.name: i + 1 for i, m in enumerate(self.skills.vocab_masks)}
        self.allowed = {i + 1: set(m.allowed_ids) for i, m in enumerate(self.skills.vocab_masks)}

    def segment(self, max_tokens: int | None = None) -> SegmentConstraint:
        req = Request("r", "segment", IMAGE, prompt="cat", max_tokens=max_tokens)
        c = self.skills.make_constraint(req, self.index, max_prompt_tokens=512)
        assert isinstance(c, SegmentConstraint)
        return c

    def allowed_at(self, c: SegmentConstraint, k: int) -> set[int]:
        spec = c.spec(k)
        assert spec is not None and spec.mask != 0 and spec.feed == Feed.TOKEN
        return self.allowed[spec.mask]


def _box_steps(c: SegmentConstraint, x: float = 0.5, y: float = 0.5, size: tuple[float, float] = (0.5, 0.5)) -> Box:
    assert c.advance(StepOutput(token=EOS, coord=x)).finish_reason is None  # no decision step
    c.advance(StepOutput(token=7, coord=y))
    a = c.advance(StepOutput(token=7, size=size))
    assert len(a.boxes) == 1 and a.finish_reason is None
    return a.boxes[0]


@pytest.fixture(scope="module")
def h() -> Harness:
    return Harness(build_test_tokenizer())


def test_prompt_and_box_specs(h: Harness) -> None:
    c = h.segment()
    assert c.prompt_ids == [1, 17374, 2, *h.tok.encode(" cat"), 3]
    kinds = [(c.spec(k).feed, c.spec(k).spatial) for k in range(3)]  # type: ignore[union-attr]
    assert kinds == [(Feed.COORD, Spatial.COORD)] * 2 + [(Feed.SIZE, Spatial.SIZE)]
    assert c.spec(3) is not None  # the first path token's mask is known ahead
    assert c.spec(4) is None  # depends on token 3


def test_start_mask_only_allows_tokens_beginning_with_m(h: Harness) -> None:
    c = h.segment()
    _box_steps(c)
    allowed = h.allowed_at(c, 3)
    assert EOS not in allowed and allowed
    for tid in allowed:
        text = h.tok.decode([tid])
        assert text == " " or text.removeprefix(" ")[:1] in ("M", "m")


def test_mask_follows_the_previous_token(h: Harness) -> None:
    c = h.segment()
    _box_steps(c)
    ids = h.tok.encode("M 120 340 L 560, 340 C 1 2 3 4 5 6 Q 10 20 30 40 Z")
    for k, tid in enumerate(ids, start=3):
        assert tid in h.allowed_at(c, k), f"token {h.tok.decode([tid])!r} refused at {k}"
        assert c.advance(StepOutput(token=tid)).token_ids == [tid]
        assert c.spec(k + 2) is None
    assert EOS in h.allowed_at(c, 3 + len(ids))
    assert c.advance(StepOutput(token=EOS)).finish_reason == FinishReason.STOP


@pytest.mark.parametrize(
    ("text", "eos_ok"),
    [("M 10", False), ("M 10 20", True), ("M 10 20 L", False), ("M 10 20 C 1 2 3 4 5", False),
     ("M 10 20 Z", True), ("M 10 20 L 3 4 ", True), ("M 10 20 30", False), ("M 10 20 30 40", True)],
)
def test_eos_only_where_the_path_may_end(h: Harness, text: str, eos_ok: bool) -> None:
    c = h.segment()
    _box_steps(c)
    ids = h.tok.encode(text)
    for k, tid in enumerate(ids, start=3):
        assert tid in h.allowed_at(c, k)
        c.advance(StepOutput(token=tid))
    assert (EOS in h.allowed_at(c, 3 + len(ids))) == eos_ok


def test_forbidden_tokens_are_masked(h: Harness) -> None:
    c = h.segment()
    _box_steps(c)
    for tid in h.tok.encode("M 10 20 "):
        c.advance(StepOutput(token=tid))
    allowed = h.allowed_at(c, c._num_outputs)
    words = {h.tok.decode([t]) for t in allowed}
    assert "1234" not in words and " cat" not in words and "<|answer|>" not in words
    assert not any("." in w or "\ufffd" in w for w in words)


def test_a_token_outside_the_grammar_ends_with_error(h: Harness) -> None:
    c = h.segment()
    box = _box_steps(c)
    bad = h.tok.encode(" cat")[0]
    a = c.advance(StepOutput(token=bad))
    assert a.finish_reason == FinishReason.ERROR
    out = final_output(Request("r", "segment", IMAGE, prompt="cat"), [bad], [], [box], a.finish_reason, h.tok)
    assert out.finish_reason == FinishReason.ERROR and out.error


def test_max_tokens_counts_the_box_steps(h: Harness) -> None:
    c = h.segment(max_tokens=3)
    c.advance(StepOutput(token=1, coord=0.5))
    c.advance(StepOutput(token=1, coord=0.5))
    assert c.advance(StepOutput(token=1, size=(0.1, 0.1))).finish_reason == FinishReason.LENGTH


def test_finish_maps_the_path_into_the_box(h: Harness) -> None:
    req = Request("r", "segment", IMAGE, prompt="cat")
    box = Box(0.2, 0.4, 0.6, 0.8)
    ids = h.tok.encode("M 0 0 L 960 480 L 480 960 Z")
    out = final_output(req, ids, [], [box], FinishReason.STOP, h.tok)
    assert out.finish_reason == FinishReason.STOP and not out.error
    assert out.svg_path == "M 0.2000,0.4000 L 0.6000,0.6000 L 0.4000,0.8000 Z"
    assert out.boxes == (box,) and out.text == "M 0 0 L 960 480 L 480 960 Z"


def test_finish_reports_a_malformed_path_as_error(h: Harness) -> None:
    req = Request("r", "segment", IMAGE, prompt="cat")
    out = final_output(req, h.tok.encode("M 10 L 5 5"), [], [Box(0, 0, 1, 1)], FinishReason.STOP, h.tok)
    assert out.finish_reason == FinishReason.ERROR and "malformed" in out.error and out.svg_path == ""


def test_finish_drops_a_cut_off_command_on_length(h: Harness) -> None:
    req = Request("r", "segment", IMAGE, prompt="cat")
    out = final_output(req, h.tok.encode("M 0 0 L 960 960 C 1 2"), [], [Box(0, 0, 1, 1)], FinishReason.LENGTH, h.tok)
    assert out.finish_reason == FinishReason.LENGTH and out.svg_path == "M 0.0000,0.0000 L 1.0000,1.0000"


@settings(max_examples=150, deadline=None)
@given(max_tokens=st.integers(1, 60), choices=st.lists(st.integers(0, 10**6), min_size=60, max_size=60))
def test_masked_random_walks_always_give_a_valid_path(h: Harness, max_tokens: int, choices: list[int]) -> None:
    c = h.segment(max_tokens=max_tokens)
    req = Request("r", "segment", IMAGE, prompt="cat", max_tokens=max_tokens)
    boxes, ids, reason, n = [], [], None, 0
    for k in range(max_tokens + 1):
        spec = c.spec(k)
        assert spec is not None
        if k >= 3:
            allowed = sorted(h.allowed[spec.mask])
            out = StepOutput(token=allowed[choices[k % 60] % len(allowed)])
        else:
            out = StepOutput(token=choices[k] % 600, coord=(choices[k] % 1024) / 1024, size=(0.25, 0.5))
        a = c.advance(out)
        n += 1
        boxes += a.boxes
        ids += a.token_ids
        if a.finish_reason is not None:
            reason = a.finish_reason
            break
    assert reason in (FinishReason.STOP, FinishReason.LENGTH) and n <= max_tokens
    assert EOS not in ids
    if reason == FinishReason.STOP:
        parse_path(h.tok.decode(ids))  # strict: a complete path
    final = final_output(req, ids, [], boxes, reason, h.tok)
    assert final.finish_reason == reason and not final.error, (h.tok.decode(ids), final.error)


@pytest.mark.skipif(importlib.util.find_spec("moonpipe.model.synth_tokenizer") is None,
                    reason="synthetic checkpoint tokenizer not available")
def test_grammar_on_the_synthetic_checkpoint_tokenizer() -> None:
    synth = importlib.import_module("moonpipe.model.synth_tokenizer")
    harness = Harness(Tokenizer(synth.build_tokenizer(32768)))
    c = harness.segment()
    _box_steps(c)
    ids = harness.tok.encode("M 120 340 L 560, 340 C 1 2 3 4 5 6 Q 10 20 30 40 Z")
    for k, tid in enumerate(ids, start=3):
        assert tid in harness.allowed_at(c, k)
        c.advance(StepOutput(token=tid))
    assert EOS in harness.allowed_at(c, 3 + len(ids))
