"""The synthetic checkpoints' tokenizer: exact vocabulary size, special ids, UTF-8 round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.config import TokenizerConfig
from moonpipe.model.synth_tokenizer import SPECIAL_TOKENS, build_tokenizer
from moonpipe.model.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(build_tokenizer(32768, seed=0))


def test_vocab_size_exact(tok: Tokenizer) -> None:
    assert tok.vocab_size == 32768
    assert Tokenizer(build_tokenizer(1000)).vocab_size == 1000


def test_special_ids(tok: Tokenizer) -> None:
    cfg = TokenizerConfig()
    assert tok.id_to_token(cfg.bos_id) == tok.id_to_token(cfg.eos_id) == "<|endoftext|>"
    named = {cfg.answer_id: "answer", cfg.thinking_id: "thinking", cfg.coord_id: "coord", cfg.size_id: "size",
             cfg.start_ground_points_id: "start_ground_points", cfg.end_ground_id: "end_ground"}
    for tid, name in named.items():
        assert tok.id_to_token(tid) == f"<|{name}|>"
    assert [tok.id_to_token(i) for i in range(10)] == list(SPECIAL_TOKENS)
    assert tok.decode(list(range(10)), skip_special_tokens=True) == ""
    assert all(i >= 10 for i in tok.encode("an ordinary caption, 42."))
    for ids in cfg.templates["caption"].values():
        assert all(tok.id_to_token(i) is not None for i in ids)


@pytest.mark.parametrize(
    "text",
    ["", "a", "Hello, world!", " leading space", "tabs\tand\nnewlines", "naïve café ß", "中文 日本語 한국어",
     "emoji 🙂👍🏽 zwj 👨‍👩‍👧", "M 120 340 L 560, 340 C 1 2 3 4 5 6 Z", "\x00\x01 control"],
)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_round_trip_any_unicode(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_token_bytes_concatenate_to_text(tok: Tokenizer) -> None:
    text = "the image shows 2 dogs"
    ids = tok.encode(text)
    assert len(ids) < len(text)  # merges exist: ordinary words are multi-byte tokens
    assert b"".join(tok.decode_token_bytes(i) for i in ids) == text.encode()


def test_deterministic() -> None:
    a = build_tokenizer(4096, seed=0).to_str()
    assert a == build_tokenizer(4096, seed=0).to_str()


def test_special_token_text_in_user_input_is_plain_text() -> None:
    from moonpipe.model.synth_tokenizer import build_tokenizer
    from moonpipe.model.tokenizer import Tokenizer

    tok = Tokenizer(build_tokenizer(1024))
    ids = tok.encode("stop <|endoftext|> here")
    assert 0 not in ids
    assert tok.decode(ids) == "stop <|endoftext|> here"
