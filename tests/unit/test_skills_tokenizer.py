"""A small byte-level BPE tokenizer for the skills tests, trained in memory.

Special tokens take ids 0..9 as in moondream2 (spec §8: bos = eos = 0, answer 3, coord 5,
size 6, ...). The corpus mixes English, SVG path text and multi-byte characters, so the
vocabulary has tokens such as ``" 12"``, ``"0,"``, ``" L"`` and partial UTF-8 sequences.
Other skills test files import ``build_test_tokenizer`` from here.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from moonpipe.model.tokenizer import Tokenizer

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|md_reserved_1|>", "<|md_reserved_2|>", "<|answer|>", "<|thinking|>",
    "<|coord|>", "<|size|>", "<|start_ground_points|>", "<|md_reserved_8|>", "<|end_ground|>",
]

_CORPUS = [
    "A photo of a cat sitting on a red couch next to a window.",
    "The image shows two people walking a dog in the park on a sunny day.",
    "What color is the car? The car is blue. How many birds are there? Three.",
    "Café naïve résumé — déjà vu. 東京の猫は かわいい。 Привет мир. 😀👍🏽 ∑∫√",
    "M 120 340 L 560 340 L 560 780 Z",
    "M120,340 L560,340 C600,400 700,500 800,900 Q 100 200 300 400 Z",
    "M 0 0 L 959 0 L 959 959 L 0 959 Z M 480 480 L 500 500 Z",
    "m 10 20 l 30 -40 c 1 2 3 4 5 6 q 7 8 9 10 z",
    "M 12, 34 L 56, 78 L 90, 12 C 345, 678, 901, 234, 567, 890 Z",
]


@functools.lru_cache(maxsize=1)
def build_test_tokenizer() -> Tokenizer:
    """The shared test tokenizer (deterministic: BPE training is deterministic)."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    numbers = [" ".join(str((i * 37 + j * 101) % 960) for j in range(8)) for i in range(60)]
    hf.train_from_iterator(_CORPUS * 20 + numbers, trainer=trainer)
    return Tokenizer(hf)


def test_special_tokens_take_ids_0_to_9() -> None:
    tok = build_test_tokenizer()
    assert [tok.id_to_token(i) for i in range(10)] == SPECIAL_TOKENS


def test_round_trip_and_partial_utf8_tokens_exist() -> None:
    tok = build_test_tokenizer()
    text = "M 120 340 L 5 6 Z Café 東京 😀"
    assert tok.decode(tok.encode(text)) == text
    singles = [tok.decode([i]) for i in range(10, tok.vocab_size)]
    assert any(s.endswith("\ufffd") for s in singles)  # byte tokens of multi-byte chars
    assert any(s.strip().isdigit() and s.startswith(" ") for s in singles)  # e.g. " 12"
