"""Paged KV-cache addressing: write and gather K/V through page tables (plain torch).

Cache layout (allocated by the engine): ``k_cache``/``v_cache`` are
``(n_layers, num_pages, page_size, n_heads, head_dim)``. Position ``p`` of a sequence lives in
page ``page_ids[p // page_size]`` at offset ``p % page_size``. Addresses are computed as
"slots" into the flattened ``(num_pages * page_size, H, hd)`` view of one layer.

Everything here is shape-static given (B, P, page_size) and free of host syncs, so the decode
path can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["decode_reads", "gather_slots", "gathered_attention", "layer_view", "position_slots", "table_slots"]


def layer_view(cache: Tensor, layer: int) -> Tensor:
    """(L, N, S, H, hd) -> layer ``layer`` as (N*S, H, hd); a view, so writes reach the cache."""
    per_layer = cache[layer]
    return per_layer.view(per_layer.shape[0] * per_layer.shape[1], *per_layer.shape[2:])


def position_slots(page_table: Tensor, positions: Tensor, page_size: int) -> Tensor:
    """Slots of ``positions``: page_table (B, P) or (P,), positions (B, ...) or (T,) -> same shape.

    For a 1-D page table, positions may have any shape; for (B, P), positions is (B,) or (B, T).
    """
    page_idx = torch.div(positions, page_size, rounding_mode="floor")
    offset = positions - page_idx * page_size
    if page_table.dim() == 1:
        pages = page_table[page_idx]
    else:
        idx = page_idx if page_idx.dim() == 2 else page_idx.unsqueeze(-1)  # (B, T)
        pages = torch.gather(page_table, 1, idx).reshape(page_idx.shape)
    return pages * page_size + offset


def table_slots(page_table: Tensor, page_size: int) -> Tensor:
    """Every slot a page table covers, in position order: (..., P) -> (..., P*page_size)."""
    offsets = torch.arange(page_size, device=page_table.device, dtype=page_table.dtype)
    slots = page_table.unsqueeze(-1) * page_size + offsets  # (..., P, S)
    return slots.flatten(-2)


def gather_slots(flat: Tensor, slots: Tensor) -> Tensor:
    """flat (N*S, H, hd), slots (...) -> (..., H, hd)."""
    return flat[slots]


def decode_reads(page_table: Tensor, positions: Tensor, page_size: int) -> tuple[Tensor, Tensor]:
    """What a decode row reads: every slot of its page table and which of them it attends
    to (keys ``[0, positions[b]]``): page_table (B, P), positions (B,) ->
    read_slots (B, K = P*page_size), mask (B, 1, K) bool."""
    read_slots = table_slots(page_table, page_size)
    key_pos = torch.arange(read_slots.shape[1], device=page_table.device)
    mask = (key_pos[None, :] <= positions[:, None]).unsqueeze(1)
    return read_slots, mask


def gathered_attention(q: Tensor, k_flat: Tensor, v_flat: Tensor, read_slots: Tensor, mask: Tensor) -> Tensor:
    """Plain-torch attention over gathered cache slots (the CPU path and the reference the
    decode kernel is tested against).

    q (B, T, H, hd); k_flat/v_flat (N*S, H, hd); read_slots (B, K) in position order;
    mask (B, T, K) bool, True = attend -> (B, T, H, hd). Reads every slot of ``read_slots``
    (the whole page bucket), masked or not.
    """
    keys = k_flat[read_slots].to(q.dtype).transpose(1, 2)  # (B, H, K, hd)
    values = v_flat[read_slots].to(q.dtype).transpose(1, 2)
    att = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask.unsqueeze(1))
    return att.transpose(1, 2)  # (B, T, H, hd)
