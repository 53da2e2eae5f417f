"""Device-side sampling of one step: vectorised over the batch, no host sync.

Per row the step's spec gives: a vocabulary mask (index into a device table), up to
``MAX_BANNED`` banned ids, greedy or temperature/top-p, and whether a coordinate or a
size is read from the hidden state. Everything is one op over the batch; per-row
choices are tensors, never Python branches. Python-level branches below depend only on
flags the host already knows for the whole batch (``any_*``), so they cost nothing when
unused and stay constant inside a captured graph bucket.
"""

from __future__ import annotations

import torch

__all__ = ["apply_masks", "sample_tokens", "spatial_values"]

NEG_INF = float("-inf")


def apply_masks(
    logits: torch.Tensor,  # (B, V) float32, modified in place
    mask_table: torch.Tensor,  # (M, V) bool: True = allowed
    mask_ids: torch.Tensor,  # (B,) long
    banned_ids: torch.Tensor,  # (B, K) long; padded with the row's first entry (or 0)
    banned_valid: torch.Tensor,  # (B, K) bool; every entry of a row that bans anything
    any_mask: bool,
    any_banned: bool,
) -> torch.Tensor:
    if any_mask:
        logits.masked_fill_(~mask_table.index_select(0, mask_ids), NEG_INF)
    if any_banned:
        # Rows without bans point at column 0 and write its own value back (gather first);
        # rows with bans pad with a duplicate banned id, so duplicates agree on -inf.
        old = logits.gather(1, banned_ids)
        logits.scatter_(1, banned_ids, torch.where(banned_valid, torch.full_like(old, NEG_INF), old))
    return logits


def sample_tokens(
    logits: torch.Tensor,  # (B, V) float32, masked
    temperature: torch.Tensor,  # (B,) float32; rows with greedy=True ignore it
    top_p: torch.Tensor,  # (B,) float32
    greedy: torch.Tensor,  # (B,) bool
    generator: torch.Generator | None,
    any_sampled: bool,
) -> torch.Tensor:  # (B,) long
    """Greedy argmax, or softmax(logits / T) restricted to the top-p nucleus, sampled
    with the exponential race (argmax(p / E), E ~ Exp(1)): no multinomial, no sync."""
    best = logits.argmax(dim=-1)
    if not any_sampled:
        return best
    temp = torch.where(greedy, torch.ones_like(temperature), temperature.clamp_min(1e-5))
    probs = torch.softmax(logits / temp[:, None], dim=-1)  # (B, V)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
    keep_sorted = before <= top_p[:, None]
    keep_sorted[:, 0] = True  # the top token always survives
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    probs = probs * keep
    race = torch.empty_like(probs).exponential_(generator=generator)
    drawn = (probs / race).argmax(dim=-1)
    return torch.where(greedy, best, drawn)


def spatial_values(
    coord_logits: torch.Tensor | None,  # (B, 1024)
    size_logits: torch.Tensor | None,  # (B, 2, 1024)
    batch: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate ``argmax / 1024`` (B,) and size ``2 ** (bin / 1023 * 10 - 10)`` (B, 2),
    float32 as in the reference; zeros where not computed."""
    if coord_logits is not None:
        coord = coord_logits.float().argmax(dim=-1).to(torch.float32) / 1024.0
    else:
        coord = torch.zeros(batch, dtype=torch.float32, device=device)
    if size_logits is not None:
        bins = size_logits.float().argmax(dim=-1).to(torch.float32)  # (B, 2)
        size = torch.pow(2.0, bins / 1023.0 * 10.0 - 10.0)
    else:
        size = torch.zeros(batch, 2, dtype=torch.float32, device=device)
    return coord, size
