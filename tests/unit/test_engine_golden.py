"""Moondream's own reference outputs (tests/data/golden/md2-tiny) reproduced *through the engine*:
pipelined scheduler, paged KV, device sampling, constraints, at depth 1 and 2, alone and in
a batch, with the prefix cache off and on (all requests ask about one image: after the
first, each prefills only its prompt over the shared image prefix)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from engine_support import GOLDEN_DIR, run_all
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from moonpipe.config import EngineConfig, ModelConfig
from moonpipe.engine import Engine
from moonpipe.model.tokenizer import Tokenizer
from moonpipe.model.weights import load_model
from moonpipe.request import Box, Point, Request


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((GOLDEN_DIR / "golden.json").read_text())


def object_tokenizer(golden: dict) -> Tokenizer:
    """The goldens used placeholder ids for ' tiny object'; a word-level tokenizer maps the
    phrase to exactly those ids so the engine's own prompt building reproduces them."""
    ids = golden["prompts"]["object_ids_placeholder"]
    words = golden["prompts"]["object_phrase"].split()
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **dict(zip(words, ids))}
    hf = HFTokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = Whitespace()
    return Tokenizer(hf)


@pytest.fixture(scope="module", params=[(1, 0), (2, 0), (1, 16), (2, 16)],
                ids=["depth1", "depth2", "depth1-prefix-cache", "depth2-prefix-cache"])
def engine(request: pytest.FixtureRequest, golden: dict) -> Iterator[Engine]:
    cfg = ModelConfig.from_dir(GOLDEN_DIR)
    model = load_model(GOLDEN_DIR)  # float32, as the goldens were computed
    depth, cache = request.param
    eng = Engine(EngineConfig(pipeline_depth=depth, prefix_cache_size=cache), model=model,
                 tokenizer=object_tokenizer(golden), model_config=cfg)
    yield eng
    eng.shutdown()


def golden_requests(golden: dict) -> list[Request]:
    image = (GOLDEN_DIR / "image.png").read_bytes()
    phrase = golden["prompts"]["object_phrase"]
    cap = golden["text"]["caption"]
    return [
        Request("caption", "caption", image, length=cap["length"], temperature=0.0,
                max_tokens=cap["settings"]["max_tokens"]),
        Request("point", "point", image, phrase, max_objects=golden["point"]["settings"]["max_objects"]),
        Request("detect", "detect", image, phrase, max_objects=golden["detect"]["settings"]["max_objects"]),
    ]


def check(results: dict, golden: dict) -> None:
    cap = results["caption"].result
    assert list(cap.token_ids) == golden["text"]["caption"]["generated_ids"]
    assert cap.finish_reason == "length"
    pts = results["point"].result
    assert pts.points == tuple(Point(p["x"], p["y"]) for p in golden["point"]["points"])
    assert pts.finish_reason == "stop"  # ended by eos, as the golden's stop_reason says
    det = results["detect"].result
    want = [Box(**o) for o in golden["detect"]["objects"]]
    assert len(det.boxes) == len(want)
    for got, exp in zip(det.boxes, want):
        for a, b in zip((got.x_min, got.y_min, got.x_max, got.y_max), (exp.x_min, exp.y_min, exp.x_max, exp.y_max)):
            assert abs(a - min(max(b, 0.0), 1.0)) <= 1e-6


def test_goldens_one_at_a_time(engine: Engine, golden: dict) -> None:
    results = {}
    for r in golden_requests(golden):
        results.update(run_all(engine, [r]))
    check(results, golden)
    if engine.config.prefix_cache_size:
        assert engine.stats().prefix_cache_hits >= 2  # point and detect reused caption's prefix


def test_goldens_batched_together(engine: Engine, golden: dict) -> None:
    check(run_all(engine, golden_requests(golden)), golden)
