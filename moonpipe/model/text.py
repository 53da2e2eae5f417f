"""Text decoder (Phi-style parallel blocks, partial rotary) over a paged KV cache.

Spec section 5. Both entry points return the residual stream after the last block, *before*
``post_ln`` (the region decoders consume it); ``lm_logits`` applies ``post_ln`` + ``lm_head``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from moonpipe.config import TextConfig
from moonpipe.model.layers import MLP, FusedAttention, apply_rotary, layer_norm
from moonpipe.model.paged import decode_reads, gathered_attention, layer_view, position_slots

__all__ = ["Attend", "DecodeAttention", "TextBlock", "TextModel"]

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``attend(q (B, T, H, hd), k_flat, v_flat) -> (B, T, H, hd)``: a block's attention over
one layer's cache, after the block wrote this step's K/V."""

DecodeAttention = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``attention(q (B, H, hd), k_flat, v_flat, page_table (B, P), positions (B,)) -> (B, H, hd)``:
a decode attention that reads the page table itself (e.g. the Triton kernel of
``moonpipe/kernels/decode_attention.py``) instead of gathered slots and a mask."""


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
        attend: Attend,
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
        att = attend(q, k_flat, v_flat).reshape(b, t, d)  # (B, T, D)
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
        attend: Attend,
    ) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, positions, layer_view(k_cache, i), layer_view(v_cache, i), write_slots, attend)
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
        attend = functools.partial(gathered_attention, read_slots=read_slots, mask=mask)
        x = self._run(embeds.unsqueeze(0), positions.unsqueeze(0), k_cache, v_cache, write_slots, attend)
        return x.squeeze(0)

    def decode(
        self,
        embeds: Tensor,  # (B, D)
        positions: Tensor,  # (B,) long
        k_cache: Tensor,
        v_cache: Tensor,
        page_table: Tensor,  # (B, P) long
        attention: DecodeAttention | None = None,
    ) -> Tensor:
        """One token per row at ``positions[b]``, attending to [0, positions[b]] -> (B, D).

        ``attention`` None: plain torch over the gathered page bucket (every path's
        reference); otherwise it reads the page table itself (see DecodeAttention).
        """
        page_size = k_cache.shape[2]
        write_slots = position_slots(page_table, positions, page_size).unsqueeze(1)  # (B, 1)
        attend: Attend
        if attention is None:
            read_slots, mask = decode_reads(page_table, positions, page_size)  # (B, K), (B, 1, K)
            attend = functools.partial(gathered_attention, read_slots=read_slots, mask=mask)
        else:
            attend = functools.partial(_one_query, attention=attention, page_table=page_table, positions=positions)
        x = self._run(embeds.unsqueeze(1), positions.unsqueeze(1), k_cache, v_cache, write_slots, attend)
        return x.squeeze(1)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """(..., D) -> (..., Vocab): ``lm_head(post_ln(hidden))``."""
        return self.lm_head(layer_norm(hidden, self.post_ln))


def _one_query(q: Tensor, k_flat: Tensor, v_flat: Tensor, *, attention: DecodeAttention,
               page_table: Tensor, positions: Tensor) -> Tensor:
    """A DecodeAttention as an Attend: q (B, 1, H, hd) -> (B, 1, H, hd)."""
    return attention(q[:, 0].contiguous(), k_flat, v_flat, page_table, positions).unsqueeze(1)
