"""Device sampling: masks, bans, greedy vs nucleus sampling, spatial values."""

from __future__ import annotations

import torch

from moonpipe.runtime.sampling import apply_masks, sample_tokens, spatial_values


def test_bans_and_masks_apply_per_row() -> None:
    logits = torch.zeros(3, 8)
    logits[:, 3] = 10.0  # the favourite everywhere
    table = torch.ones(2, 8, dtype=torch.bool)
    table[1] = False
    table[1, 5] = True  # mask 1 allows only token 5
    mask_ids = torch.tensor([0, 0, 1])
    banned = torch.tensor([[3, 3, 3, 3], [0, 0, 0, 0], [0, 0, 0, 0]])
    valid = torch.tensor([[True] * 4, [False] * 4, [False] * 4])
    apply_masks(logits, table, mask_ids, banned, valid, any_mask=True, any_banned=True)
    best = sample_tokens(logits, torch.ones(3), torch.ones(3), torch.ones(3, dtype=torch.bool), None, False)
    assert best.tolist()[1:] == [3, 5]
    assert best[0].item() != 3 and logits[0, 3] == float("-inf")
    assert logits[1, 0] == 0.0  # padding of a row without bans leaves column 0 alone


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]])).repeat(400, 1)
    gen = torch.Generator().manual_seed(0)
    n = 400
    out = sample_tokens(logits.clone(), torch.ones(n), torch.full((n,), 0.5), torch.zeros(n, dtype=torch.bool), gen, True)
    # mass before token 1 is 0.6 > 0.5, so only token 0 survives
    assert set(out.tolist()) == {0}
    out = sample_tokens(logits.clone(), torch.ones(n), torch.full((n,), 0.92), torch.zeros(n, dtype=torch.bool), gen, True)
    assert set(out.tolist()) == {0, 1, 2}  # mass before token 2 is 0.9 (kept), before 3 is 0.95
    # greedy rows ignore temperature entirely
    greedy = sample_tokens(logits.clone(), torch.full((n,), 5.0), torch.ones(n), torch.ones(n, dtype=torch.bool), gen, True)
    assert set(greedy.tolist()) == {0}


def test_spatial_values_match_reference_bins() -> None:
    coord_logits = torch.zeros(2, 1024)
    coord_logits[0, 706] = 1.0
    coord_logits[1, 0] = 1.0
    size_logits = torch.zeros(2, 2, 1024)
    size_logits[:, 0, 1023] = 1.0
    size_logits[:, 1, 0] = 1.0
    coord, size = spatial_values(coord_logits, size_logits, 2, torch.device("cpu"))
    assert coord.tolist() == [706 / 1024, 0.0]
    assert size[0].tolist() == [1.0, 2.0**-10]
