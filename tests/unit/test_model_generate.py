"""The single-request greedy reference loops (moonpipe/model/generate.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moonpipe.config import ModelConfig
from moonpipe.model.checkpoint import preset_config
from moonpipe.model.generate import (
    Sequence,
    embed_prompt,
    generate_points,
    generate_text,
    image_prefix_embeds,
)
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.region import coord_from_logits, size_from_logits, spatial_ref_values
from moonpipe.model.weights import build_random_model


@pytest.fixture(scope="module")
def model() -> MoondreamModel:
    torch.set_num_threads(2)
    cfg = preset_config("tiny")
    return build_random_model(ModelConfig(text=cfg.text, vision=replace(cfg.vision, enc_n_layers=1),
                                          region=cfg.region), seed=11)


@pytest.fixture(scope="module")
def prefix_embeds(model: MoondreamModel) -> torch.Tensor:
    """(730, D): BOS + the image embeddings of one random global + one local crop."""
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        emb = model.encode_image(torch.rand(2, 3, 378, 378, generator=g) * 2 - 1, (1, 1))
        return image_prefix_embeds(model, emb)


@pytest.fixture(scope="module")
def prefix(model: MoondreamModel, prefix_embeds: torch.Tensor) -> Sequence:
    with torch.inference_mode():
        seq = Sequence.allocate(model, 730 + 64, page_size=16)
        seq.prefill(prefix_embeds)
    return seq


def test_text_generation_is_deterministic_and_bans_answer(model: MoondreamModel, prefix: Sequence) -> None:
    prompt = embed_prompt(model, model.config.tokenizer.templates["caption"]["normal"])
    with torch.inference_mode():
        a = generate_text(model, prefix.fork(), prompt, max_tokens=12, record_logits=True)
        b = generate_text(model, prefix.fork(), prompt, max_tokens=12)
    assert a.ids == b.ids and a.stop_reason == b.stop_reason
    assert 1 <= len(a.ids) <= 12 and a.decode_hidden.shape == (len(a.ids), model.config.text.dim)
    answer = model.config.tokenizer.answer_id
    assert answer not in a.ids[1:]
    for step, logits in enumerate(a.step_logits[:-1]):
        masked = logits.clone()
        masked[answer] = float("-inf")
        assert int(masked.argmax()) == a.ids[step + 1]


def test_text_stops_at_eos(model: MoondreamModel, prefix: Sequence) -> None:
    prompt = embed_prompt(model, [1, 2, 3])
    eos = model.config.tokenizer.eos_id
    saved = model.text.lm_head.bias.detach().clone()
    try:
        with torch.inference_mode():
            model.text.lm_head.bias[eos] += 100.0
            res = generate_text(model, prefix.fork(), prompt, max_tokens=5)
    finally:
        with torch.no_grad():
            model.text.lm_head.bias.copy_(saved)
    assert res.ids == [] and res.stop_reason == "eos"


def test_one_shot_prefill_equals_cached_prefix(
    model: MoondreamModel, prefix: Sequence, prefix_embeds: torch.Tensor
) -> None:
    prompt = embed_prompt(model, [1, 500, 2, 3])
    with torch.inference_mode():
        cached = prefix.fork().prefill(prompt)
        one_shot = Sequence.allocate(model, 730 + 8, page_size=5)
        full = one_shot.prefill(torch.cat([prefix_embeds, prompt]))
    torch.testing.assert_close(full[-len(prompt):], cached, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("include_size", [False, True])
def test_points_and_boxes(model: MoondreamModel, prefix: Sequence, include_size: bool) -> None:
    prompt = embed_prompt(model, [1, 2581, 2, 700, 3])
    with torch.inference_mode():
        res = generate_points(model, prefix.fork(), prompt, include_size=include_size, max_objects=3)
    n = len(res.objects)
    eos = model.config.tokenizer.eos_id
    assert (res.stop_reason == "eos") == (res.decisions[-1] == eos)
    assert res.stop_reason == "eos" or n == 3
    assert len(res.decisions) == n + 1 and len(res.coord_logits) == 2 * n
    assert len(res.decode_hidden) == (3 if include_size else 2) * n
    for i, obj in enumerate(res.objects):
        x = float(coord_from_logits(res.coord_logits[2 * i]))
        if include_size:
            w, h = size_from_logits(res.size_logits[i]).tolist()
            assert obj["x_max"] - obj["x_min"] == pytest.approx(w) and obj["y_max"] - obj["y_min"] == pytest.approx(h)
            assert (obj["x_min"] + obj["x_max"]) / 2 == pytest.approx(x)
        else:
            assert obj["x"] == x and 0.0 <= obj["y"] < 1.0


def test_region_value_helpers() -> None:
    logits = torch.full((2, 2, 1024), -1.0)
    logits[0, 0, 0] = logits[0, 1, 1023] = logits[1, 0, 511] = logits[1, 1, 7] = 5.0
    assert coord_from_logits(logits[:, 0]).tolist() == [0.0, 511 / 1024]
    sizes = size_from_logits(logits)
    assert sizes.dtype == torch.float32
    assert sizes[0].tolist() == [2.0**-10, 1.0]


def test_spatial_refs_fill_placeholders(model: MoondreamModel) -> None:
    tok = model.config.tokenizer
    coords, sizes = spatial_ref_values([(0.25, 0.75), (0.1, 0.2, 0.4, 0.6)])
    assert coords == pytest.approx([0.25, 0.75, 0.25, 0.4]) and sizes == [pytest.approx((0.3, 0.4))]
    ids = [1, tok.coord_id, tok.coord_id, 2, tok.coord_id, tok.coord_id, tok.size_id, 3]
    with torch.inference_mode():
        emb = embed_prompt(model, ids, [(0.25, 0.75), (0.1, 0.2, 0.4, 0.6)])
        want = model.encode_coordinate(torch.tensor([[0.75]]))[0]
    torch.testing.assert_close(emb[2], want)
    torch.testing.assert_close(emb[3], model.text.wte[2].detach())
    with pytest.raises(ValueError, match="placeholders"):
        embed_prompt(model, ids, [(0.1, 0.2)])
