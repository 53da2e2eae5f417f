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
from torch import Tensor

__all__ = ["gather_slots", "layer_view", "position_slots", "table_slots"]


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
