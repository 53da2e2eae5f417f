"""Text decoder (Phi-style parallel blocks, partial rotary) over a paged KV cache.

Spec section 5. Both entry points return the residual stream after the last block, *before*
``post_ln`` (the region decoders consume it); ``lm_logits`` applies ``post_ln`` + ``lm_head``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moonpipe.config import TextConfig
from moonpipe.model.layers import MLP, FusedAttention, apply_rotary, layer_norm
from moonpipe.model.paged import layer_view, position_slots, table_slots

__all__ = ["TextBlock", "TextModel"]


class TextBlock(nn.Module):
    """``h = LN(x)``; ``x + Attn(h) + MLP(h)`` (one LayerNorm shared by both branches)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln = nn.LayerNorm(cfg.dim)
        self.attn = FusedAttention(cfg.dim)
        self.mlp = MLP(cfg.dim, cfg.ff_dim)

    def forward(
        self,
        x: Tensor,  # (B, T, D)
        positions: Tensor,  # (B, T) absolute positions of x
        k_flat: Tensor,  # (N*S, H, hd) this layer's cache, a view
        v_flat: Tensor,
        write_slots: Tensor,  # (B, T) cache slots for x's K/V
        read_slots: Tensor,  # (B, K) cache slots attended to, in position order
        mask: Tensor,  # (B, T, K) bool, True = attend
    ) -> Tensor:
        b, t, d = x.shape
        hd = d // self.n_heads
        h = layer_norm(x, self.ln)
        q, k, v = (part.view(b, t, self.n_heads, hd) for part in self.attn.qkv(h).split(d, dim=-1))
        q = apply_rotary(q, positions)
        k = apply_rotary(k, positions)
        # Write this step's K/V first so every query also sees its own position.
        k_flat.index_copy_(0, write_slots.reshape(-1), k.reshape(b * t, self.n_heads, hd).to(k_flat.dtype))
        v_flat.index_copy_(0, write_slots.reshape(-1), v.reshape(b * t, self.n_heads, hd).to(v_flat.dtype))
        keys = k_flat[read_slots].to(q.dtype).transpose(1, 2)  # (B, H, K, hd)
        values = v_flat[read_slots].to(q.dtype).transpose(1, 2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask.unsqueeze(1))
        att = att.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return x + self.attn.proj(att) + self.mlp(h)


class TextModel(nn.Module):
    """Embedding, decoder blocks and head; keys match ``model.text.*`` (``wte`` has no suffix)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Parameter(torch.zeros(cfg.vocab_size, cfg.dim))
        self.blocks = nn.ModuleList(TextBlock(cfg) for _ in range(cfg.n_layers))
        self.post_ln = nn.LayerNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size)

    def _run(
        self,
        x: Tensor,
        positions: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        write_slots: Tensor,
        read_slots: Tensor,
        mask: Tensor,
    ) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, positions, layer_view(k_cache, i), layer_view(v_cache, i), write_slots, read_slots, mask)
        return x

    def prefill(
        self,
        embeds: Tensor,  # (T, D)
        start_pos: int,
        k_cache: Tensor,
        v_cache: Tensor,
        page_ids: Tensor,  # (n_pages,) pages of this sequence in position order
        prefix_len: int,
    ) -> Tensor:
        """Positions [start_pos, start_pos+T): write K/V, attend to [0, start_pos+T) -> (T, D)."""
        t = embeds.shape[0]
        device = embeds.device
        page_size = k_cache.shape[2]
        positions = torch.arange(start_pos, start_pos + t, device=device)  # (T,)
        key_pos = torch.arange(start_pos + t, device=device)  # (K,)
        causal = key_pos[None, :] <= positions[:, None]
        in_prefix = (positions[:, None] < prefix_len) & (key_pos[None, :] < prefix_len)
        mask = (causal | in_prefix).unsqueeze(0)  # (1, T, K)
        write_slots = position_slots(page_ids, positions, page_size).unsqueeze(0)  # (1, T)
        read_slots = position_slots(page_ids, key_pos, page_size).unsqueeze(0)  # (1, K)
        x = self._run(embeds.unsqueeze(0), positions.unsqueeze(0), k_cache, v_cache, write_slots, read_slots, mask)
        return x.squeeze(0)

    def decode(
        self,
        embeds: Tensor,  # (B, D)
        positions: Tensor,  # (B,) long
        k_cache: Tensor,
        v_cache: Tensor,
        page_table: Tensor,  # (B, P) long
    ) -> Tensor:
        """One token per row at ``positions[b]``, attending to [0, positions[b]] -> (B, D)."""
        page_size = k_cache.shape[2]
        write_slots = position_slots(page_table, positions, page_size).unsqueeze(1)  # (B, 1)
        read_slots = table_slots(page_table, page_size)  # (B, K = P*page_size)
        key_pos = torch.arange(read_slots.shape[1], device=embeds.device)
        mask = (key_pos[None, :] <= positions[:, None]).unsqueeze(1)  # (B, 1, K)
        x = self._run(embeds.unsqueeze(1), positions.unsqueeze(1), k_cache, v_cache, write_slots, read_slots, mask)
        return x.squeeze(1)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """(..., D) -> (..., Vocab): ``lm_head(post_ln(hidden))``."""
        return self.lm_head(layer_norm(hidden, self.post_ln))
