"""Building blocks shared by the vision, text and region models.

Names of submodules follow the reference checkpoint (``fc1``/``fc2``, ``qkv``/``proj``) so a
module's ``state_dict`` keys are the checkpoint keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LAYER_NORM_EPS", "MLP", "FusedAttention", "apply_rotary", "gelu_approx", "layer_norm", "rotary_inv_freq"]

LAYER_NORM_EPS = 1e-5


def gelu_approx(x: Tensor) -> Tensor:
    """GELU with the tanh approximation (every MLP of moondream2 uses it)."""
    return F.gelu(x, approximate="tanh")


def layer_norm(x: Tensor, ln: nn.LayerNorm) -> Tensor:
    """``F.layer_norm`` with eps 1e-5, the reference's only epsilon."""
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, LAYER_NORM_EPS)


class MLP(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim if out_dim is None else out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(gelu_approx(self.fc1(x)))


class FusedAttention(nn.Module):
    """Weights of one attention layer: fused ``qkv`` ([q; k; v] rows) and output ``proj``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


def rotary_inv_freq(rotary_dim: int, theta: float, device: torch.device) -> Tensor:
    """Rotary frequencies ``1 / theta**(2j/rotary_dim)``, j < rotary_dim/2, in float32 (rope.py)."""
    exponent = torch.arange(0, rotary_dim, 2, device=device)[: rotary_dim // 2].float() / rotary_dim
    return 1.0 / (theta**exponent)


def apply_rotary(x: Tensor, positions: Tensor, rotary_dim: int = 32, theta: float = 10000.0) -> Tensor:
    """Partial "rotate-half" rotary on the first ``rotary_dim`` dims of each head.

    x: (..., T, H, hd); positions: (..., T) absolute positions (long). Pairs are (j, j + rd/2),
    which is the reference's layout up to a permutation shared by q and k (spec 5.4).
    Computed in float32 and cast back to x's dtype.
    """
    half = rotary_dim // 2
    inv_freq = rotary_inv_freq(rotary_dim, theta, x.device)  # (half,)
    angles = positions.float().unsqueeze(-1) * inv_freq  # (..., T, half)
    cos = angles.cos().unsqueeze(-2)  # (..., T, 1, half)
    sin = angles.sin().unsqueeze(-2)
    x_r = x[..., :half].float()
    x_i = x[..., half:rotary_dim].float()
    out_r = x_r * cos - x_i * sin
    out_i = x_r * sin + x_i * cos
    return torch.cat([out_r.to(x.dtype), out_i.to(x.dtype), x[..., rotary_dim:]], dim=-1)

