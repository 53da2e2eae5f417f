"""Vision encoder (SigLIP-style ViT), local-crop stitching/pooling and the projection MLP.

Spec section 4. Every crop is 378x378, i.e. a 27x27 grid of 14-pixel patches (729 tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moonpipe.config import VisionConfig
from moonpipe.model.layers import MLP, FusedAttention, layer_norm

__all__ = ["PATCH_GRID", "VisionModel", "create_patches", "reconstruct_from_crops"]

PATCH_GRID = 27  # 378 / 14; the reference reads it from enc_n_layers (== 27 in moondream2)


def create_patches(pixels: Tensor, patch_size: int = 14) -> Tensor:
    """(n, C, 378, 378) -> (n, 729, C*14*14), patches row-major, vector order (c, dy, dx)."""
    n, c, h, w = pixels.shape
    gh, gw = h // patch_size, w // patch_size
    x = pixels.reshape(n, c, gh, patch_size, gw, patch_size)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (n, gh, gw, C, dy, dx)
    return x.reshape(n, gh * gw, c * patch_size * patch_size)


def reconstruct_from_crops(local: Tensor, tiling: tuple[int, int], margin: int = 4) -> Tensor:
    """Stitch per-crop feature grids into one canvas, keeping each tile's interior (spec 4.4).

    local: (th*tw, G, G, C) in row-major tile order -> (19*th + 2m, 19*tw + 2m, C).
    """
    th, tw = tiling
    n, g, _, c = local.shape
    if n != th * tw:
        raise ValueError(f"reconstruct_from_crops: {n} local crops for tiling {tiling}")
    step = g - 2 * margin
    canvas = local.new_zeros(step * th + 2 * margin, step * tw + 2 * margin, c)
    for i in range(th):
        y0, y1 = (0 if i == 0 else margin), (g if i == th - 1 else g - margin)
        for j in range(tw):
            x0, x1 = (0 if j == 0 else margin), (g if j == tw - 1 else g - margin)
            canvas[step * i + y0 : step * i + y1, step * j + x0 : step * j + x1] = local[
                i * tw + j, y0:y1, x0:x1
            ]
    return canvas


class VisionBlock(nn.Module):
    """Pre-norm ViT block: ``x += Attn(LN1 x)``; ``x += MLP(LN2 x)``."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.n_heads = cfg.enc_n_heads
        self.ln1 = nn.LayerNorm(cfg.enc_dim)
        self.attn = FusedAttention(cfg.enc_dim)
        self.ln2 = nn.LayerNorm(cfg.enc_dim)
        self.mlp = MLP(cfg.enc_dim, cfg.enc_ff_dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        hd = d // self.n_heads
        qkv = self.attn.qkv(layer_norm(x, self.ln1))  # (n, T, 3D)
        q, k, v = (
            part.view(n, t, self.n_heads, hd).transpose(1, 2) for part in qkv.chunk(3, dim=-1)
        )  # (n, H, T, hd)
        att = F.scaled_dot_product_attention(q, k, v)
        x = x + self.attn.proj(att.transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(layer_norm(x, self.ln2))


class VisionModel(nn.Module):
    """Encoder + projection; ``state_dict`` keys match ``model.vision.*`` without the prefix."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        patch_dim = cfg.in_channels * cfg.enc_patch_size**2
        self.patch_emb = nn.Linear(patch_dim, cfg.enc_dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, PATCH_GRID * PATCH_GRID, cfg.enc_dim))
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.enc_n_layers))
        self.post_ln = nn.LayerNorm(cfg.enc_dim)
        self.proj_mlp = MLP(2 * cfg.enc_dim, cfg.proj_inner_dim, cfg.proj_out_dim)

    def encode(self, pixels: Tensor) -> Tensor:
        """Run the encoder on all crops as one batch: (n, 3, 378, 378) -> (n, 729, V)."""
        x = self.patch_emb(create_patches(pixels, self.cfg.enc_patch_size)) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return layer_norm(x, self.post_ln)

    def pool_local(self, features: Tensor, tiling: tuple[int, int]) -> Tensor:
        """Local-crop features (th*tw, 729, V) -> stitched and pooled (27, 27, V)."""
        g = PATCH_GRID
        local = features.reshape(-1, g, g, features.shape[-1])
        canvas = reconstruct_from_crops(local, tiling, self.cfg.overlap_margin)  # (Hc, Wc, V)
        pooled = F.adaptive_avg_pool2d(canvas.permute(2, 0, 1), (g, g))  # (V, 27, 27)
        return pooled.permute(1, 2, 0)

    def project(self, global_features: Tensor, pooled: Tensor) -> Tensor:
        """(729, V) global + (27, 27, V) pooled local -> (729, D) image embeddings."""
        local = pooled.reshape(PATCH_GRID * PATCH_GRID, -1)
        return self.proj_mlp(torch.cat([global_features, local], dim=-1))

    def forward(self, pixels: Tensor, tiling: tuple[int, int]) -> Tensor:
        """All crops (global first) -> (729, D)."""
        features = self.encode(pixels)  # (n, 729, V)
        return self.project(features[0], self.pool_local(features[1:], tiling))
