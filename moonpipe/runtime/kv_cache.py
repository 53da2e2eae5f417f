"""The paged KV cache's device tensors.

Layout (what ``MoondreamModel.prefill/decode`` read and write)::

    k, v: (n_layers, num_pages, page_size, n_heads, head_dim)

Position ``p`` of a sequence lives in page ``page_ids[p // page_size]`` at offset
``p % page_size``. Page 0 is a scratch page. Which sequence owns which page is the
scheduler's bookkeeping (``scheduler/pages.py``); the geometry is ``config.KVLayout``.
"""

from __future__ import annotations

import torch

from moonpipe.config import KVLayout, TextConfig

__all__ = ["KVCache"]


class KVCache:
    """The device tensors of the paged cache."""

    def __init__(self, text: TextConfig, layout: KVLayout, dtype: torch.dtype, device: torch.device) -> None:
        shape = (text.n_layers, layout.num_pages, layout.page_size, text.n_heads, text.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, N, S, H, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
