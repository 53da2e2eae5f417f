"""Fused pointwise kernels of the decode step (Triton language), one launch each.

``add3_layer_norm``: the residual update of a Phi-style block, ``x + attn + mlp``, fused
with the next block's LayerNorm (or, without LayerNorm, the final residual update):
plain PyTorch spends two adds and a LayerNorm on it. The sums are rounded to the model
dtype in the same order as ``(x + a) + m`` in PyTorch, so the fused step stays close to
the plain one in bf16, and equal up to float32 rounding in float32.

``rotary_kv_write``: the partial rotary embedding of q and k (first 32 dims of each
head, pairs (j, j + 16), as ``moonpipe/model/layers.apply_rotary``) and the paged K/V
write of one decode token per row, straight from the fused qkv projection. Plain PyTorch
spends ~35 small kernels on this per layer (frequencies, angles, cos/sin, halves, casts,
cat, slot arithmetic, two index copies).

Both run under the Triton interpreter on CPU (``TRITON_INTERPRET=1``) for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["add3_layer_norm", "rotary_kv_write"]


@triton.jit
def _add3_layer_norm(
    x_ptr, a_ptr, m_ptr, sum_ptr, w_ptr, b_ptr, h_ptr,
    stride_x, stride_a, stride_m, stride_s, stride_h,
    dim, eps,
    HAS_NORM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK_D)
    used = c < dim
    dtype = sum_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + c, mask=used, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + row * stride_a + c, mask=used, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + row * stride_m + c, mask=used, other=0.0).to(tl.float32)
    xa = (x + a).to(dtype).to(tl.float32)  # rounded as PyTorch's (x + a) + m
    total = (xa + m).to(dtype)
    tl.store(sum_ptr + row * stride_s + c, total, mask=used)
    if HAS_NORM:
        y = total.to(tl.float32)
        mean = tl.sum(y, 0) / dim
        centred = tl.where(used, y - mean, 0.0)
        var = tl.sum(centred * centred, 0) / dim
        w = tl.load(w_ptr + c, mask=used, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + c, mask=used, other=0.0).to(tl.float32)
        h = centred * (1.0 / tl.sqrt(var + eps)) * w + bias
        tl.store(h_ptr + row * stride_h + c, h.to(h_ptr.dtype.element_ty), mask=used)


def add3_layer_norm(x: Tensor, a: Tensor, m: Tensor, weight: Tensor | None, bias: Tensor | None,
                    eps: float) -> tuple[Tensor, Tensor | None]:
    """x, a, m (B, D) -> (x + a + m, LayerNorm(x + a + m) or None without ``weight``)."""
    rows, dim = x.shape
    if a.shape != x.shape or m.shape != x.shape:
        raise ValueError(f"add3_layer_norm: shapes differ: {tuple(x.shape)}, {tuple(a.shape)}, {tuple(m.shape)}")
    if x.stride(-1) != 1 or a.stride(-1) != 1 or m.stride(-1) != 1:
        raise ValueError("add3_layer_norm: rows must be contiguous")
    total = torch.empty_like(x)
    norm = weight is not None
    h = torch.empty_like(x) if norm else total
    w = weight if weight is not None else total
    b = bias if bias is not None else total
    block = triton.next_power_of_2(dim)
    _add3_layer_norm[(rows,)](
        x, a, m, total, w, b, h,
        x.stride(0), a.stride(0), m.stride(0), total.stride(0), h.stride(0),
        dim, eps,
        HAS_NORM=norm, BLOCK_D=block, num_warps=min(8, max(1, block // 256)),
    )
    return total, (h if norm else None)


@triton.jit
def _rotary_kv_write(
    qkv_ptr, pos_ptr, table_ptr, inv_freq_ptr, q_out_ptr, k_ptr, v_ptr,
    stride_qkv, stride_tb, stride_qo, stride_kt,
    page_size, n_heads,
    BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr,
):
    b = tl.program_id(0)
    pos = tl.load(pos_ptr + b)
    page = tl.load(table_ptr + b * stride_tb + pos // page_size).to(tl.int64)
    row = page * page_size + pos % page_size  # this token's row of the flat cache
    h = tl.arange(0, BLOCK_H)[:, None]  # (BLOCK_H, 1)
    heads = h < n_heads
    j = tl.arange(0, HALF)[None, :]  # (1, HALF): rotated pairs (j, j + HALF)
    r = tl.arange(0, HEAD_DIM - 2 * HALF)[None, :]  # the dims rotary leaves alone
    d = tl.arange(0, HEAD_DIM)[None, :]
    angle = pos.to(tl.float32) * tl.load(inv_freq_ptr + j)  # (1, HALF)
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    dim = n_heads * HEAD_DIM
    base = qkv_ptr + b * stride_qkv + h * HEAD_DIM  # q at +0, k at +dim, v at +2*dim
    q_dst = q_out_ptr + b * stride_qo + h * HEAD_DIM
    k_dst = k_ptr + row * stride_kt + h * HEAD_DIM
    for part in tl.static_range(2):  # 0: q -> q_out, 1: k -> the cache
        src = base + part * dim
        dst = q_dst if part == 0 else k_dst
        x_r = tl.load(src + j, mask=heads, other=0.0).to(tl.float32)
        x_i = tl.load(src + HALF + j, mask=heads, other=0.0).to(tl.float32)
        rest = tl.load(src + 2 * HALF + r, mask=heads, other=0.0)
        # round to the model dtype first, as apply_rotary does before the cache write
        out_r = (x_r * cos - x_i * sin).to(qkv_ptr.dtype.element_ty)
        out_i = (x_r * sin + x_i * cos).to(qkv_ptr.dtype.element_ty)
        ty = dst.dtype.element_ty
        tl.store(dst + j, out_r.to(ty), mask=heads)
        tl.store(dst + HALF + j, out_i.to(ty), mask=heads)
        tl.store(dst + 2 * HALF + r, rest.to(ty), mask=heads)
    v = tl.load(base + 2 * dim + d, mask=heads, other=0.0)
    tl.store(v_ptr + row * stride_kt + h * HEAD_DIM + d, v.to(v_ptr.dtype.element_ty), mask=heads)


def rotary_kv_write(qkv: Tensor, positions: Tensor, page_table: Tensor, inv_freq: Tensor,
                    k_flat: Tensor, v_flat: Tensor, page_size: int) -> Tensor:
    """qkv (B, 3*H*hd) -> rotated q (B, H, hd); rotated k and v written to the cache at
    each row's position (k_flat/v_flat (N*S, H, hd), one layer). ``inv_freq`` (hd_rot/2,)
    float32 are the rotary frequencies (``moonpipe.model.layers.rotary_inv_freq``)."""
    rows = qkv.shape[0]
    _, n_heads, head_dim = k_flat.shape
    half = inv_freq.shape[0]
    if qkv.shape[1] != 3 * n_heads * head_dim or qkv.stride(-1) != 1:
        raise ValueError(f"rotary_kv_write: qkv {tuple(qkv.shape)} does not match the cache {tuple(k_flat.shape)}")
    if k_flat.stride() != v_flat.stride() or k_flat.stride()[1:] != (head_dim, 1):
        raise ValueError("rotary_kv_write: the cache rows must be (H, hd) contiguous, k and v alike")
    q = torch.empty((rows, n_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    _rotary_kv_write[(rows,)](
        qkv, positions, page_table, inv_freq, q, k_flat, v_flat,
        qkv.stride(0), page_table.stride(0), q.stride(0), k_flat.stride(0),
        page_size, n_heads,
        BLOCK_H=triton.next_power_of_2(n_heads), HEAD_DIM=head_dim, HALF=half,
    )
    return q
