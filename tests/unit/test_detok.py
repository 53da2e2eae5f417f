"""IncrementalDetokenizer: deltas concatenate to the full decode, never split a character."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.skills import IncrementalDetokenizer

sys.path.insert(0, str(Path(__file__).parent))
from test_skills_tokenizer import build_test_tokenizer


def _chunks(ids: list[int], sizes: list[int]) -> list[list[int]]:
    out, i = [], 0
    for size in sizes:
        if i >= len(ids):
            break
        out.append(ids[i:i + size])
        i += size
    if i < len(ids):
        out.append(ids[i:])
    return out


def test_multibyte_characters_are_never_split() -> None:
    tok = build_test_tokenizer()
    text = "Café 𝄞 東京の犬 ꙮ 😀👍🏽 ∑∫√ done"
    ids = tok.encode(text)
    assert any(tok.decode([i]).endswith("\ufffd") for i in ids)  # the test is meaningful
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push([i]) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_flush_returns_a_held_incomplete_tail() -> None:
    tok = build_test_tokenizer()
    ids = tok.encode("ab😀")
    detok = IncrementalDetokenizer(tok)
    partial = "".join(detok.push([i]) for i in ids[:-1])
    assert "\ufffd" not in partial
    assert partial + detok.flush() == tok.decode(ids[:-1])
    assert detok.flush() == ""


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60), sizes=st.lists(st.integers(1, 4), max_size=60))
def test_deltas_of_real_text_concatenate_to_the_text(text: str, sizes: list[int]) -> None:
    tok = build_test_tokenizer()
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(chunk) for chunk in _chunks(ids, sizes)]
    assert "\ufffd" not in "".join(deltas) or "\ufffd" in text
    assert "".join(deltas) + detok.flush() == text


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.integers(10, 599), max_size=80), sizes=st.lists(st.integers(1, 12), max_size=80))
def test_deltas_of_arbitrary_ids_concatenate_to_the_full_decode(ids: list[int], sizes: list[int]) -> None:
    tok = build_test_tokenizer()
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(chunk) for chunk in _chunks(ids, sizes)]
    assert "".join(deltas) + detok.flush() == tok.decode(ids)



@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.sampled_from(["Café", "𝄞", "東京の犬", "😀👍🏽", "∑∫√", " cat", "naïve", "done"]),
                      min_size=1, max_size=8),
       cut=st.floats(0.0, 1.0))
def test_deltas_match_tokenizers_decode_stream_and_flush_keeps_the_held_tail(words: list[str], cut: float) -> None:
    """Why moonpipe keeps its own detokeniser: step by step it emits exactly what the pinned
    ``tokenizers.decoders.DecodeStream`` emits, but a request cut mid-character (max_tokens,
    cancellation) must still end with the whole decode, and DecodeStream has no flush."""
    from tokenizers.decoders import DecodeStream

    tok = build_test_tokenizer()
    ids = tok.encode(" ".join(words))
    ids = ids[: max(1, round(cut * len(ids)))]
    ours = IncrementalDetokenizer(tok)
    stream = DecodeStream(skip_special_tokens=False)
    emitted = ""
    for i in ids:
        delta = ours.push([i])
        assert delta == (stream.step(tok.hf, i) or "")
        emitted += delta
    assert emitted + ours.flush() == tok.decode(ids)
