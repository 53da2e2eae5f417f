"""Paged split-KV decode attention in Triton language (one query token per row).

For each row ``b`` the query attends to positions ``[0, positions[b]]`` of its sequence,
whose K/V live in the paged cache: position ``p`` at page ``page_table[b, p // S]``,
offset ``p % S`` (``moonpipe/model/paged.py``). Two launches::

    stage 1  grid (B, H, splits): program (b, h, s) walks split s of row b's keys
             (page-table lookups per key block) with an online softmax and writes a
             partial output (D,) and its log-sum-exp, both float32
    stage 2  grid (B, H): merges the splits of (b, h), weighted by their log-sum-exp

The grid depends only on shapes (B, H, and ``num_splits``, which the caller chooses from
static sizes), never on the lengths: lengths are read on the device from ``positions``
and each split covers ``ceil(len / splits)`` keys rounded up to whole key blocks. So the
launches are capturable in a CUDA graph and the work scales with the real length, not
with the page bucket. Unlike gathering the pages and running SDPA, no key is read twice
and no mask is built.

On CPU the same kernels run under the Triton interpreter (``TRITON_INTERPRET=1``): that
is how CI tests them against :func:`moonpipe.model.paged.gathered_attention`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["BLOCK_N", "MAX_SPLITS", "choose_num_splits", "paged_decode_attention"]

BLOCK_N = 64  # keys per block on a GPU (one page-table gather + one (BLOCK_N, D) tile per step)
# The interpreter's cost is per operation, not per element: bigger blocks on CPU.
_CPU_BLOCK_N = 256
MAX_SPLITS = 32  # stage 2 loads every split of a (row, head) in one tile of this width
_LOG2E = 1.4426950408889634


@triton.jit
def _stage1(
    q_ptr, k_ptr, v_ptr, table_ptr, pos_ptr, part_ptr, lse_ptr,
    stride_qb, stride_qh,  # q (B, H, D), last dim contiguous
    stride_kt, stride_kh,  # k/v (N*S, H, D) one layer's flat cache, last dim contiguous
    stride_tb,  # page table (B, P)
    stride_pb, stride_ph, stride_ps,  # partial outputs (B, H, splits, D) f32
    stride_lb, stride_lh,  # log-sum-exp (B, H, splits) f32, base-2
    page_size, num_splits, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    seq_len = tl.load(pos_ptr + b).to(tl.int32) + 1
    per_split = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK) * BLOCK
    start = s * per_split
    end = tl.minimum(start + per_split, seq_len)
    d = tl.arange(0, HEAD_DIM)
    # qk_scale folds 1/sqrt(D) and log2(e): the softmax runs on exp2
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + d).to(tl.float32) * qk_scale
    m_i = -float("inf")
    l_i = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for n0 in range(start, end, BLOCK):
        n = n0 + tl.arange(0, BLOCK)  # (BLOCK,) key positions
        valid = n < end
        page = tl.load(table_ptr + b * stride_tb + n // page_size, mask=valid, other=0).to(tl.int64)
        row = page * page_size + n % page_size  # (BLOCK,) rows of the flat cache
        offs = row[:, None] * stride_kt + h * stride_kh + d[None, :]  # (BLOCK, D)
        k = tl.load(k_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
        score = tl.where(valid, tl.sum(q[None, :] * k, 1), -float("inf"))  # (BLOCK,)
        m_new = tl.maximum(m_i, tl.max(score, 0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(score - m_new)
        v = tl.load(v_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
    # an empty split (short rows) stores weight 0: lse -inf, output 0
    nonempty = l_i > 0.0
    out = acc / tl.where(nonempty, l_i, 1.0)
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), -float("inf"))
    tl.store(part_ptr + b * stride_pb + h * stride_ph + s * stride_ps + d, out)
    tl.store(lse_ptr + b * stride_lb + h * stride_lh + s, lse)


@triton.jit
def _stage2(
    part_ptr, lse_ptr, out_ptr,
    stride_pb, stride_ph, stride_ps,
    stride_lb, stride_lh,
    stride_ob, stride_oh,  # out (B, H, D)
    num_splits,
    HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, HEAD_DIM)
    used = s < num_splits
    lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + s, mask=used, other=-float("inf"))
    weight = tl.exp2(lse - tl.max(lse, 0))  # split 0 is never empty, so the max is finite
    part = tl.load(part_ptr + b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :],
                   mask=used[:, None], other=0.0)
    out = tl.sum(weight[:, None] * part, 0) / tl.sum(weight, 0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def choose_num_splits(batch: int, heads: int, max_keys: int, target_programs: int) -> int:
    """Splits per (row, head): enough programs to fill the device (``target_programs``),
    at most one split per key block of the longest possible row, at most MAX_SPLITS.

    Every argument is a static size (batch bucket, page bucket), so a captured graph keeps
    its split count; the real lengths only decide how much each split reads.
    """
    if min(batch, heads, max_keys, target_programs) < 1:
        raise ValueError("choose_num_splits: every size must be positive")
    wanted = math.ceil(target_programs / (batch * heads))
    return max(1, min(wanted, math.ceil(max_keys / BLOCK_N), MAX_SPLITS))


def paged_decode_attention(
    q: Tensor,  # (B, H, D)
    k_flat: Tensor,  # (N*S, H, D) one layer of the paged cache
    v_flat: Tensor,
    page_table: Tensor,  # (B, P) page ids, integer
    positions: Tensor,  # (B,) row b attends to keys [0, positions[b]]
    page_size: int,
    num_splits: int = 1,
    block_n: int | None = None,
) -> Tensor:
    """Attention of one query per row over its paged keys/values -> (B, H, D) in q's dtype.

    The caller guarantees ``positions[b] < P * page_size`` (the page table covers the
    row); table entries past a row's length are never read. ``block_n``: keys per block
    (a power of two; default BLOCK_N on CUDA, larger under the CPU interpreter).
    """
    b, h, d = q.shape
    if k_flat.shape[1:] != (h, d) or v_flat.shape != k_flat.shape:
        raise ValueError(f"paged_decode_attention: q {tuple(q.shape)} does not match the cache "
                         f"{tuple(k_flat.shape)} / {tuple(v_flat.shape)}")
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"paged_decode_attention: num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")
    if q.stride(-1) != 1 or k_flat.stride(-1) != 1 or v_flat.stride() != k_flat.stride():
        raise ValueError("paged_decode_attention: q, k and v need a contiguous last dim (and k, v equal strides)")
    block = block_n or (BLOCK_N if q.is_cuda else _CPU_BLOCK_N)
    out = torch.empty_like(q)
    part = torch.empty((b, h, num_splits, d), dtype=torch.float32, device=q.device)
    lse = torch.empty((b, h, num_splits), dtype=torch.float32, device=q.device)
    _stage1[(b, h, num_splits)](
        q, k_flat, v_flat, page_table, positions, part, lse,
        q.stride(0), q.stride(1),
        k_flat.stride(0), k_flat.stride(1),
        page_table.stride(0),
        part.stride(0), part.stride(1), part.stride(2),
        lse.stride(0), lse.stride(1),
        page_size, num_splits, _LOG2E / math.sqrt(d),
        HEAD_DIM=d, BLOCK=block,
    )
    _stage2[(b, h)](
        part, lse, out,
        part.stride(0), part.stride(1), part.stride(2),
        lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1),
        num_splits,
        HEAD_DIM=d, SPLITS=MAX_SPLITS,
    )
    return out
