"""A deterministic byte-level BPE tokenizer for synthetic checkpoints.

Built with HuggingFace ``tokenizers``: ids 0..9 are the special/template tokens of the
starmie-v1 layout (0 ``<|endoftext|>`` = bos = eos, 3 answer, 4 thinking, 5 coord, 6 size,
7 start_ground_points, 9 end_ground), then the 256 byte symbols, then BPE merges trained on a
generated pseudo-text corpus, padded with ``<|unused_N|>`` tokens to exactly ``vocab_size``.
Byte-level pre-tokenisation means every UTF-8 string round-trips.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["SPECIAL_TOKENS", "build_tokenizer"]

SPECIAL_TOKENS = (
    "<|endoftext|>",  # 0: bos and eos
    "<|prompt|>",  # 1: opens a template's instruction
    "<|argument|>",  # 2: separates instruction and argument
    "<|answer|>",  # 3: answer_id
    "<|thinking|>",  # 4: thinking_id
    "<|coord|>",  # 5: coord_id
    "<|size|>",  # 6: size_id
    "<|start_ground_points|>",  # 7
    "<|reserved_8|>",  # 8
    "<|end_ground|>",  # 9
)

_WORDS = (
    "the a an of and to in is on with for at by from this that there are was were be has "
    "have image picture photo shows showing man woman person people child dog cat car bus "
    "tree sky water street building table chair window door red blue green white black "
    "yellow small large big little two three four left right top bottom front back near "
    "standing sitting walking holding looking wearing next behind under over inside outside "
    "what where how many which color describe caption point detect object objects"
).split()
_SYLLABLES = (
    "ka ri to na shi mo lu ve an en in on un ar er or th st ch qu pre con ing tion ly ed es "
    "al el il ol ul ra re ro ta te ti da de di sa se so la le li ma me mi pa pe po ba be bo"
).split()
_EXTRA = "0123456789 .,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~` \n\t éèüößçñ 中文 日本語 한국어 Привет мир 🙂"


def _corpus(seed: int, n_lines: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = []
        for _ in range(rng.randint(4, 16)):
            r = rng.random()
            if r < 0.5:
                words.append(rng.choice(_WORDS))
            elif r < 0.9:
                words.append("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
            else:
                words.append(str(rng.randint(0, 10_000)))
        line = " ".join(words)
        lines.append(line.capitalize() + rng.choice(".,!?"))
    lines.append(_EXTRA)
    return lines


def build_tokenizer(vocab_size: int, *, seed: int = 0) -> Tokenizer:
    """A byte-level BPE tokenizer with exactly ``vocab_size`` ids (at least 266 + 1)."""
    base = len(SPECIAL_TOKENS) + 256
    if vocab_size < base:
        raise ValueError(f"vocab_size must be >= {base}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # ~0.4 corpus lines per token is enough for the trainer to fill the vocabulary.
    tok.train_from_iterator(_corpus(seed, max(1000, vocab_size * 2 // 5)), trainer=trainer)
    missing = vocab_size - tok.get_vocab_size(with_added_tokens=True)
    if missing > 0:
        start = tok.get_vocab_size(with_added_tokens=True)
        tok.add_special_tokens([f"<|unused_{start + i}|>" for i in range(missing)])
    if tok.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise RuntimeError("synthetic tokenizer: vocabulary size mismatch")
    return tok
