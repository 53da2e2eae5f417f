"""Paged KV attention: decode vs prefill consistency, page sizes, batching and padding rows."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moonpipe.config import ModelConfig
from moonpipe.model.checkpoint import preset_config
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.weights import build_random_model

ATOL = 2e-5


@pytest.fixture(scope="module")
def model() -> MoondreamModel:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = preset_config("tiny")
    # One vision layer: these tests only exercise the text decoder.
    cfg = ModelConfig(text=cfg.text, vision=replace(cfg.vision, enc_n_layers=1), region=cfg.region)
    return build_random_model(cfg, seed=3)


def _cache(model: MoondreamModel, num_pages: int, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = model.config.text
    shape = (t.n_layers, num_pages, page_size, t.n_heads, t.head_dim)
    return torch.zeros(shape), torch.zeros(shape)


def _pages(n: int, num_pages: int, seed: int) -> torch.Tensor:
    """n distinct non-zero pages in a scrambled order (page 0 = scratch)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(num_pages - 1, generator=g)[:n] + 1).long()


def _embeds(model: MoondreamModel, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.config.text.dim, generator=g)


@pytest.mark.parametrize("page_size", [1, 16, 7])
@pytest.mark.parametrize("prefix_len", [12, 0])
def test_decode_steps_equal_one_prefill(model: MoondreamModel, page_size: int, prefix_len: int) -> None:
    total, n_prefill = 20, 13  # decode positions 13..19 cross page boundaries for 7 and 16
    x = _embeds(model, total, seed=1)
    n_pages = -(-total // page_size)
    pages = _pages(n_pages, n_pages + 4, seed=page_size)
    with torch.inference_mode():
        k1, v1 = _cache(model, n_pages + 4, page_size)
        full = model.prefill(x, 0, k1, v1, pages, prefix_len=prefix_len)
        k2, v2 = _cache(model, n_pages + 4, page_size)
        part = model.prefill(x[:n_prefill], 0, k2, v2, pages, prefix_len=prefix_len)
        rows = [part]
        for p in range(n_prefill, total):
            rows.append(model.decode(x[p : p + 1], torch.tensor([p]), k2, v2, pages[None]))
    torch.testing.assert_close(torch.cat(rows), full, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(k2, k1, atol=ATOL, rtol=1e-5)


def test_decode_one_token_equals_prefill_of_that_token(model: MoondreamModel) -> None:
    x = _embeds(model, 9, seed=2)
    pages = _pages(3, 6, seed=0)
    with torch.inference_mode():
        k, v = _cache(model, 6, 4)
        model.prefill(x[:8], 0, k, v, pages, prefix_len=5)
        k2, v2 = k.clone(), v.clone()
        by_prefill = model.prefill(x[8:], 8, k, v, pages, prefix_len=5)
        by_decode = model.decode(x[8:], torch.tensor([8]), k2, v2, pages[None])
    torch.testing.assert_close(by_decode, by_prefill, atol=ATOL, rtol=1e-5)


def test_prefix_is_bidirectional_and_suffix_causal(model: MoondreamModel) -> None:
    x = _embeds(model, 10, seed=4)
    pages = torch.tensor([1, 2, 3])
    with torch.inference_mode():
        k, v = _cache(model, 4, 4)
        base = model.prefill(x, 0, k, v, pages, prefix_len=6)
        x2 = x.clone()
        x2[5] = _embeds(model, 1, seed=7)[0]  # last prefix token: every prefix row sees it
        changed = model.prefill(x2, 0, *_cache(model, 4, 4), pages, prefix_len=6)
        x3 = x.clone()
        x3[8] = _embeds(model, 1, seed=8)[0]  # a causal token: rows before it do not see it
        later = model.prefill(x3, 0, *_cache(model, 4, 4), pages, prefix_len=6)
    assert (changed[0] - base[0]).abs().max() > 1e-3
    torch.testing.assert_close(later[:8], base[:8])
    assert (later[9] - base[9]).abs().max() > 1e-3


def test_batched_decode_with_short_table_and_padding_rows(model: MoondreamModel) -> None:
    """Rows at different positions, P columns for the longest row, padding rows on page 0."""
    page_size, num_pages = 4, 16
    lengths = [5, 11, 3]
    xs = [_embeds(model, n + 1, seed=10 + i) for i, n in enumerate(lengths)]
    tables = [torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), torch.tensor([7, 8, 9])]
    with torch.inference_mode():
        k, v = _cache(model, num_pages, page_size)
        want = []
        for x, n, tab in zip(xs, lengths, tables, strict=True):
            kr, vr = _cache(model, num_pages, page_size)
            want.append(model.prefill(x, 0, kr, vr, tab, prefix_len=2)[-1])
            model.prefill(x[:n], 0, k, v, tab, prefix_len=2)
        p = max(-(-(n + 1) // page_size) for n in lengths)  # 3 columns
        table = torch.zeros(5, p, dtype=torch.long)  # rows 3, 4: padding -> page 0
        for b, tab in enumerate(tables):
            used = -(-(lengths[b] + 1) // page_size)
            table[b, :used] = tab[:used]
        positions = torch.tensor([*lengths, 0, 0])
        emb = torch.cat([torch.stack([x[-1] for x in xs]), _embeds(model, 2, seed=99)])
        got = model.decode(emb, positions, k, v, table)
    torch.testing.assert_close(got[:3], torch.stack(want), atol=ATOL, rtol=1e-5)
    assert torch.isfinite(got).all()


def test_decode_leaves_other_pages_untouched(model: MoondreamModel) -> None:
    with torch.inference_mode():
        k, v = _cache(model, 6, 2)
        before = k.clone()
        model.decode(_embeds(model, 1, seed=5), torch.tensor([3]), k, v, torch.tensor([[4, 2]]))
    changed = (k != before).any(dim=(0, 2, 3, 4)).nonzero().flatten().tolist()
    assert changed == [2]  # position 3 -> page index 1 -> page 2
    assert (k[:, 2, 0] == 0).all() and (k[:, 2, 1] != 0).any()


def test_logits_and_region_heads_shapes(model: MoondreamModel) -> None:
    h = _embeds(model, 3, seed=6)
    with torch.inference_mode():
        assert model.lm_logits(h).shape == (3, model.config.text.vocab_size)
        assert model.decode_coordinate(h).shape == (3, 1024)
        assert model.decode_size(h).shape == (3, 2, 1024)
        assert model.encode_coordinate(torch.rand(3, 1)).shape == (3, model.config.text.dim)
        assert model.encode_size(torch.rand(3, 2)).shape == (3, model.config.text.dim)
        assert model.embed_tokens(torch.tensor([[0, 1], [2, 3]])).shape == (2, 2, model.config.text.dim)


def test_decode_is_shape_static() -> None:
    """On the meta device any host sync or data-dependent shape (.item(), nonzero, boolean
    indexing) raises, so this checks the decode path is CUDA-graph capturable in principle."""
    cfg = preset_config("tiny")
    with torch.device("meta"):
        m = MoondreamModel(ModelConfig(text=cfg.text, vision=replace(cfg.vision, enc_n_layers=1), region=cfg.region))
        k = torch.empty(cfg.text.n_layers, 8, 16, cfg.text.n_heads, cfg.text.head_dim)
        v = torch.empty_like(k)
        out = m.decode(torch.empty(4, cfg.text.dim), torch.zeros(4, dtype=torch.long), k, v,
                       torch.zeros(4, 3, dtype=torch.long))
        logits = m.lm_logits(out)
        coord = m.encode_coordinate(torch.empty(4, 1))
        size = m.encode_size(torch.empty(4, 2))
    assert out.shape == coord.shape == size.shape == (4, cfg.text.dim)
    assert logits.shape == (4, cfg.text.vocab_size)
