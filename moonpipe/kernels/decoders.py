"""The three ways to run the text decoder's decode step (``EngineConfig.decode_kernels``).

=========  ==============================================================================
``torch``  ``MoondreamModel.decode``: plain PyTorch, attention over the gathered page
           bucket with a mask (the CPU serving path and every other path's reference)
``triton`` the same, with attention replaced by the paged split-KV kernel
           (``decode_attention.py``): reads only each row's real length
``fused``  the kernel attention plus fused pointwise kernels (``pointwise.py``) and, where
           it checks out, cuBLASLt's bias+GELU epilogue: ~9 launches per layer instead of
           ~50, so a CUDA-graph replay is not dominated by launch gaps
=========  ==============================================================================

Each decoder is ``decoder(embeds (B, D), positions (B,), k_cache, v_cache, page_table
(B, P)) -> hidden (B, D)`` (before ``post_ln``), static-shaped and free of host syncs, so a
step that uses it can be captured in a CUDA graph. The choice and its start-up checks are
in ``select.py``; this module imports Triton only through the kernel modules, lazily.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from moonpipe.model.layers import LAYER_NORM_EPS, gelu_approx, layer_norm, rotary_inv_freq
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.paged import layer_view
from moonpipe.model.text import TextBlock

__all__ = ["FusedDecoder", "KernelAttention", "TextDecoder", "TorchDecoder", "TritonDecoder", "target_programs"]

ROTARY_DIM = 32  # apply_rotary's default: the first 32 dims of each head rotate


class TextDecoder(Protocol):
    """What ``DeviceWork.decode`` calls (see module docstring)."""

    kind: str

    def __call__(self, embeds: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
                 page_table: Tensor) -> Tensor: ...


def target_programs(device: torch.device) -> int:
    """How many attention programs fill the device: 4 per SM on CUDA (so a batch-1 step
    still splits each row's keys over the whole GPU); 1 on CPU, where the interpreter runs
    programs one after another and splitting only adds work."""
    if device.type != "cuda":
        return 1
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


class TorchDecoder:
    """Plain PyTorch (``MoondreamModel.decode``)."""

    kind = "torch"

    def __init__(self, model: MoondreamModel) -> None:
        self.model = model

    def __call__(self, embeds: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
                 page_table: Tensor) -> Tensor:
        return self.model.decode(embeds, positions, k_cache, v_cache, page_table)


class KernelAttention:
    """The paged split-KV kernel as a ``moonpipe.model.text.DecodeAttention``; the split
    count comes from static sizes (batch, heads, page-table width), never from lengths."""

    def __init__(self, page_size: int, programs: int, num_splits: int | None = None) -> None:
        from moonpipe.kernels import ops

        self._op = ops.decode_attention
        self.page_size = page_size
        self.programs = programs
        self.num_splits = num_splits  # None: choose per shape

    def splits(self, batch: int, heads: int, num_pages: int) -> int:
        from moonpipe.kernels.decode_attention import choose_num_splits

        if self.num_splits is not None:
            return self.num_splits
        return choose_num_splits(batch, heads, num_pages * self.page_size, self.programs)

    def __call__(self, q: Tensor, k_flat: Tensor, v_flat: Tensor, page_table: Tensor,
                 positions: Tensor) -> Tensor:
        splits = self.splits(q.shape[0], q.shape[1], page_table.shape[1])
        return self._op(q, k_flat, v_flat, page_table, positions, self.page_size, splits)


class TritonDecoder:
    """``MoondreamModel.decode`` with the paged attention kernel."""

    kind = "triton"

    def __init__(self, model: MoondreamModel, page_size: int, programs: int,
                 num_splits: int | None = None) -> None:
        self.model = model
        self.attention = KernelAttention(page_size, programs, num_splits)

    def __call__(self, embeds: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
                 page_table: Tensor) -> Tensor:
        return self.model.decode(embeds, positions, k_cache, v_cache, page_table, attention=self.attention)


class FusedDecoder:
    """The decode step with the kernel attention and fused pointwise kernels.

    Per layer: add3+LayerNorm (fused with the previous layer's residual) -> qkv GEMM ->
    rotary + paged K/V write -> attention (2) -> proj GEMM -> fc1 GEMM (+GELU epilogue
    when ``addmm_gelu``, else a GELU kernel) -> fc2 GEMM; then one final add3.
    """

    kind = "fused"

    def __init__(self, model: MoondreamModel, page_size: int, programs: int, *,
                 addmm_gelu: bool, num_splits: int | None = None) -> None:
        from moonpipe.kernels import ops

        self._ops = ops
        self.model = model
        self.blocks = [cast(TextBlock, block) for block in model.text.blocks]
        self.attention = KernelAttention(page_size, programs, num_splits)
        device = model.text.wte.device
        self.inv_freq = rotary_inv_freq(ROTARY_DIM, 10000.0, device)  # (16,) f32, made once
        self.addmm_gelu = addmm_gelu

    def _mlp(self, h: Tensor, block: TextBlock) -> Tensor:
        fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        if self.addmm_gelu:  # one cuBLASLt GEMM with a bias+GELU(tanh) epilogue
            g = torch._addmm_activation(fc1.bias, h, fc1.weight.t(), use_gelu=True)
        else:
            g = gelu_approx(F.linear(h, fc1.weight, fc1.bias))
        return F.linear(g, fc2.weight, fc2.bias)

    def __call__(self, embeds: Tensor, positions: Tensor, k_cache: Tensor, v_cache: Tensor,
                 page_table: Tensor) -> Tensor:
        ops = self._ops
        b, d = embeds.shape
        page_size = k_cache.shape[2]
        x = embeds
        h = layer_norm(x, self.blocks[0].ln)
        a = m = x  # the previous block's attention and MLP outputs (set in the loop)
        for i, block in enumerate(self.blocks):
            if i > 0:
                x, h = ops.add3_ln(x, a, m, block.ln.weight, block.ln.bias, LAYER_NORM_EPS)
            k_flat, v_flat = layer_view(k_cache, i), layer_view(v_cache, i)
            qkv = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias)  # (B, 3D)
            q = ops.rotary_write(qkv, positions, page_table, self.inv_freq, k_flat, v_flat, page_size)
            att = self.attention(q, k_flat, v_flat, page_table, positions)  # (B, H, hd)
            a = F.linear(att.view(b, d), block.attn.proj.weight, block.attn.proj.bias)
            m = self._mlp(h, block)
        return ops.add3(x, a, m)
