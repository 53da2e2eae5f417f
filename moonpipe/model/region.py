"""Region model: Fourier-feature encoders and MLP decoders for coordinates and sizes.

Spec section 6. Coordinates are fractions of the image side; sizes are (w, h) fractions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from moonpipe.config import RegionConfig
from moonpipe.model.layers import MLP

__all__ = ["RegionModel", "coord_from_logits", "size_from_logits", "spatial_ref_values"]


def fourier_features(x: Tensor, freqs: Tensor) -> Tensor:
    """``f = 2π·x @ F``; returns ``cat(cos f, sin f)``. x (..., k), freqs (k, m) -> (..., 2m)."""
    f = 2 * math.pi * x @ freqs
    return torch.cat([f.cos(), f.sin()], dim=-1)


def coord_from_logits(logits: Tensor) -> Tensor:
    """(..., 1024) coordinate logits -> (...) float32 value ``argmax / 1024``."""
    return torch.argmax(logits, dim=-1).float() / logits.shape[-1]


def size_from_logits(logits: Tensor) -> Tensor:
    """(..., 2, 1024) size logits -> (..., 2) float32 ``2**((argmax/1023)*10 - 10)``."""
    bins = torch.argmax(logits, dim=-1).float()
    return torch.pow(2.0, (bins / 1023.0) * 10.0 - 10.0)


def spatial_ref_values(
    refs: Sequence[Sequence[float]],
) -> tuple[list[float], list[tuple[float, float]]]:
    """Spatial references -> (coordinate values, size values) in placeholder order.

    A point ``(x, y)`` gives two coordinates; a box ``(x0, y0, x1, y1)`` gives its centre
    (two coordinates) and one size ``(x1 - x0, y1 - y0)`` (md.py ``encode_spatial_refs``).
    """
    coords: list[float] = []
    sizes: list[tuple[float, float]] = []
    for ref in refs:
        if len(ref) == 2:
            coords += [float(ref[0]), float(ref[1])]
        elif len(ref) == 4:
            x0, y0, x1, y1 = (float(v) for v in ref)
            coords += [(x0 + x1) / 2, (y0 + y1) / 2]
            sizes.append((x1 - x0, y1 - y0))
        else:
            raise ValueError(f"spatial reference must have 2 (point) or 4 (box) values, got {len(ref)}")
    return coords, sizes


class RegionModel(nn.Module):
    """Keys match ``model.region.*`` without the prefix."""

    def __init__(self, cfg: RegionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.coord_features = nn.Parameter(torch.zeros(1, cfg.coord_feat_dim // 2))
        self.coord_encoder = nn.Linear(cfg.coord_feat_dim, cfg.dim)
        self.coord_decoder = MLP(cfg.dim, cfg.inner_dim, cfg.coord_out_dim)
        self.size_features = nn.Parameter(torch.zeros(2, cfg.size_feat_dim // 2))
        self.size_encoder = nn.Linear(cfg.size_feat_dim, cfg.dim)
        self.size_decoder = MLP(cfg.dim, cfg.inner_dim, cfg.size_out_dim)

    def encode_coordinate(self, c: Tensor) -> Tensor:
        """(..., 1) -> (..., D)."""
        c = c.to(self.coord_features.dtype)
        return self.coord_encoder(fourier_features(c, self.coord_features))

    def encode_size(self, s: Tensor) -> Tensor:
        """(..., 2) (w, h) -> (..., D)."""
        s = s.to(self.size_features.dtype)
        return self.size_encoder(fourier_features(s, self.size_features))

    def decode_coordinate(self, h: Tensor) -> Tensor:
        """(..., D) hidden -> (..., 1024) logits."""
        return self.coord_decoder(h)

    def decode_size(self, h: Tensor) -> Tensor:
        """(..., D) hidden -> (..., 2, 1024) logits (row 0 width, row 1 height)."""
        out = self.size_decoder(h)
        return out.view(*out.shape[:-1], 2, out.shape[-1] // 2)
