"""The Triton kernels as PyTorch custom operators (``torch.ops.moonpipe.*``).

Registering them makes each launch one named operator: the profiler and the kernel
counter (``moonpipe/kernels/count.py``) see it like any aten op, and ``torch.compile``
treats it as opaque. Registration happens once, when this module is first imported.

=====================================  =====  =============================================
operator                               kernels  replaces (plain PyTorch, per layer)
=====================================  =====  =============================================
paged_decode_attention                  2     page gathers, mask, SDPA (reads the bucket)
rotary_kv_write                         1     rotary on q and k, two paged index copies
add3_layer_norm                         1     two residual adds + the next LayerNorm
add3                                    1     the last two residual adds
=====================================  =====  =============================================
"""

from __future__ import annotations

import torch
from torch import Tensor

from moonpipe.kernels.decode_attention import paged_decode_attention
from moonpipe.kernels.pointwise import add3_layer_norm, rotary_kv_write

__all__ = ["LAUNCHES", "add3", "add3_ln", "decode_attention", "rotary_write"]

# Triton launches per call of each operator (the counter adds them up).
LAUNCHES = {
    "moonpipe::paged_decode_attention": 2,
    "moonpipe::rotary_kv_write": 1,
    "moonpipe::add3_layer_norm": 1,
    "moonpipe::add3": 1,
}


def _attention(q: Tensor, k_flat: Tensor, v_flat: Tensor, page_table: Tensor, positions: Tensor,
               page_size: int, num_splits: int) -> Tensor:
    return paged_decode_attention(q, k_flat, v_flat, page_table, positions, page_size, num_splits)


def _rotary(qkv: Tensor, positions: Tensor, page_table: Tensor, inv_freq: Tensor, k_flat: Tensor,
            v_flat: Tensor, page_size: int) -> Tensor:
    return rotary_kv_write(qkv, positions, page_table, inv_freq, k_flat, v_flat, page_size)


def _add3_ln(x: Tensor, a: Tensor, m: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    total, h = add3_layer_norm(x, a, m, weight, bias, eps)
    assert h is not None
    return total, h


def _add3(x: Tensor, a: Tensor, m: Tensor) -> Tensor:
    return add3_layer_norm(x, a, m, None, None, 0.0)[0]


decode_attention = torch.library.custom_op(
    "moonpipe::paged_decode_attention", _attention, mutates_args=(),
    schema="(Tensor q, Tensor k_flat, Tensor v_flat, Tensor page_table, Tensor positions, "
           "int page_size, int num_splits) -> Tensor")
rotary_write = torch.library.custom_op(
    "moonpipe::rotary_kv_write", _rotary, mutates_args=("k_flat", "v_flat"),
    schema="(Tensor qkv, Tensor positions, Tensor page_table, Tensor inv_freq, Tensor(a!) k_flat, "
           "Tensor(b!) v_flat, int page_size) -> Tensor")
add3_ln = torch.library.custom_op(
    "moonpipe::add3_layer_norm", _add3_ln, mutates_args=(),
    schema="(Tensor x, Tensor a, Tensor m, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)")
add3 = torch.library.custom_op(
    "moonpipe::add3", _add3, mutates_args=(), schema="(Tensor x, Tensor a, Tensor m) -> Tensor")


@decode_attention.register_fake
def _attention_fake(q: Tensor, k_flat: Tensor, v_flat: Tensor, page_table: Tensor, positions: Tensor,
                    page_size: int, num_splits: int) -> Tensor:
    return torch.empty_like(q)


@rotary_write.register_fake
def _rotary_fake(qkv: Tensor, positions: Tensor, page_table: Tensor, inv_freq: Tensor, k_flat: Tensor,
                 v_flat: Tensor, page_size: int) -> Tensor:
    return qkv.new_empty((qkv.shape[0], k_flat.shape[1], k_flat.shape[2]))


@add3_ln.register_fake
def _add3_ln_fake(x: Tensor, a: Tensor, m: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


@add3.register_fake
def _add3_fake(x: Tensor, a: Tensor, m: Tensor) -> Tensor:
    return torch.empty_like(x)
