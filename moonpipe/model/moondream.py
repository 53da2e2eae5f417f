"""MoondreamModel: the whole moondream2 network as pure tensor functions.

The engine owns the KV cache and the scheduling; this module only computes. Parameter
names equal the checkpoint keys without the leading ``model.`` (``vision.*``, ``text.*``,
``region.*``). ``decode`` is capturable in a CUDA graph (no host syncs, static shapes for
fixed (B, P)).
"""

from __future__ import annotations

from torch import Tensor, nn

from moonpipe.config import ModelConfig
from moonpipe.model.region import RegionModel
from moonpipe.model.text import DecodeAttention, TextModel
from moonpipe.model.vision import VisionModel

__all__ = ["MoondreamModel"]


class MoondreamModel(nn.Module):
    """Vision encoder + text decoder + region heads (spec sections 4-6).

    KV caches: ``k_cache``/``v_cache`` of shape ``(n_layers, num_pages, page_size, H, 64)``;
    position ``p`` lives at page ``page_ids[p // page_size]``, offset ``p % page_size``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionModel(config.vision)
        self.text = TextModel(config.text)
        self.region = RegionModel(config.region)

    def encode_image(self, pixels: Tensor, tiling: tuple[int, int]) -> Tensor:
        """Normalised crops (n, 3, 378, 378), global first -> image embeddings (729, D)."""
        return self.vision(pixels, tiling)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """(...) long -> (..., D)."""
        return self.text.wte[ids]

    def prefill(
        self,
        embeds: Tensor,
        start_pos: int,
        k_cache: Tensor,
        v_cache: Tensor,
        page_ids: Tensor,
        prefix_len: int | None = None,
    ) -> Tensor:
        """Prefill (T, D) at positions [start_pos, start_pos+T) -> hidden (T, D) before post_ln.

        Writes post-rotary K/V into the pages ``page_ids``; queries attend to [0, start_pos)
        from the cache plus themselves: positions < ``prefix_len`` bidirectionally within the
        prefix, later ones causally (seeing the whole prefix). ``prefix_len=0`` = plain causal;
        ``None`` = the model's (BOS + image tokens, ``ModelConfig.prefix_len``).
        """
        if prefix_len is None:
            prefix_len = self.config.prefix_len
        return self.text.prefill(embeds, start_pos, k_cache, v_cache, page_ids, prefix_len)

    def decode(
        self,
        embeds: Tensor,
        positions: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        page_table: Tensor,
        attention: DecodeAttention | None = None,
    ) -> Tensor:
        """One step for B rows: (B, D) at ``positions`` (B,) -> hidden (B, D) before post_ln.

        Row b writes K/V at ``positions[b]`` through ``page_table[b]`` (B, P) and attends to
        [0, positions[b]]. Unused table entries may point anywhere (e.g. a scratch page).
        ``attention``: a kernel that reads the page table itself (None: plain torch).
        """
        return self.text.decode(embeds, positions, k_cache, v_cache, page_table, attention)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """(..., D) hidden -> (..., Vocab) logits (post_ln + lm_head)."""
        return self.text.lm_logits(hidden)

    def encode_coordinate(self, c: Tensor) -> Tensor:
        """(..., 1) -> (..., D)."""
        return self.region.encode_coordinate(c)

    def encode_size(self, s: Tensor) -> Tensor:
        """(..., 2) -> (..., D)."""
        return self.region.encode_size(s)

    def decode_coordinate(self, h: Tensor) -> Tensor:
        """(..., D) -> (..., 1024) logits."""
        return self.region.decode_coordinate(h)

    def decode_size(self, h: Tensor) -> Tensor:
        """(..., D) -> (..., 2, 1024) logits."""
        return self.region.decode_size(h)
