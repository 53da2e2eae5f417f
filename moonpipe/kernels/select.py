"""Choosing the decode step's kernels (``EngineConfig.decode_kernels``) and checking them.

``auto`` (the default) uses the paged attention kernel on CUDA when Triton is importable
and the kernel matches the plain-torch attention on this device at start-up (a small
random problem in the model's dtype); otherwise it logs why and uses plain PyTorch. On
CPU ``auto`` is plain PyTorch. ``fused`` is opt-in until a GPU run shows it correct and
faster (``moonpipe gpu-check``). Naming ``triton`` or ``fused`` where the kernels cannot
run is a configuration error, raised at engine start.

On CPU the kernels run only under the Triton interpreter (``TRITON_INTERPRET=1``, read
by Triton when the kernel modules are first imported): correct, and very slow; for tests.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

from moonpipe.config import DECODE_KERNELS
from moonpipe.kernels.decoders import (
    FusedDecoder,
    TextDecoder,
    TorchDecoder,
    TritonDecoder,
    target_programs,
)
from moonpipe.model.layers import gelu_approx
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.paged import decode_reads, gathered_attention

__all__ = ["DECODE_KERNELS", "addmm_gelu_matches", "attention_error", "build_decoder", "kernels_unavailable"]

log = logging.getLogger("moonpipe.kernels")

_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def kernels_unavailable(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None: they can)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not installed ({exc})"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ("on CPU the Triton kernels run only under the interpreter: set TRITON_INTERPRET=1 "
                "before starting (slow; meant for tests)")
    if device.type == "cpu" and not _interpreter_numpy_ok():
        return (f"Triton's interpreter turns 1-element arrays into loop bounds with int(), which "
                f"numpy {np.__version__} refuses (numpy 1.26, the project pin, accepts it): "
                f"run the CPU kernel paths with numpy 1.x")
    return None


def _interpreter_numpy_ok() -> bool:
    """Whether numpy still converts a 1-element array to an int (deprecated in 1.25, an
    error in recent 2.x): Triton 3.6's interpreter relies on it for dynamic loop bounds."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            int(np.zeros(1, dtype=np.int64))
        except TypeError:
            return False
    return True


def attention_error(model: MoondreamModel, page_size: int, device: torch.device) -> str | None:
    """Run the attention kernel once against the plain-torch attention on a small random
    problem with the model's heads and dtype; None when it matches."""
    from moonpipe.kernels.decode_attention import paged_decode_attention

    text = model.text.cfg
    dtype = model.text.wte.dtype
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    lengths = [1, page_size, 3 * page_size + 1]
    num_pages = 2 + 4 * len(lengths)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device).to(dtype)

    k, v = rand(num_pages * page_size, text.n_heads, 64), rand(num_pages * page_size, text.n_heads, 64)
    q = rand(len(lengths), text.n_heads, 64)
    table = torch.arange(num_pages - 1, 0, -1, device=device)[: 4 * len(lengths)].view(len(lengths), 4)
    positions = torch.tensor([n - 1 for n in lengths], device=device)
    try:
        with torch.no_grad():
            got = paged_decode_attention(q, k, v, table, positions, page_size, num_splits=2)
            read, mask = decode_reads(table, positions, page_size)
            want = gathered_attention(q.float()[:, None], k.float(), v.float(), read, mask)[:, 0]
    except Exception as exc:
        return f"the attention kernel failed: {type(exc).__name__}: {exc}"
    err = (got.float() - want).abs().max().item()
    if not err <= _TOLERANCE[dtype]:  # also catches NaN
        return f"the attention kernel differs from plain torch by {err:.3g} (tolerance {_TOLERANCE[dtype]:g})"
    return None


def addmm_gelu_matches(device: torch.device) -> bool:
    """Whether ``torch._addmm_activation(use_gelu=True)`` computes GELU(tanh) here, for the
    row counts a decode step has (CUDA: a cuBLASLt epilogue; CPU uses erf GELU instead)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    w = torch.randn((96, 64), generator=gen, device=device)
    bias = torch.randn((96,), generator=gen, device=device)
    for rows in (1, 8):
        x = torch.randn((rows, 64), generator=gen, device=device)
        with torch.no_grad():
            got = torch._addmm_activation(bias, x, w.t(), use_gelu=True)
            want = gelu_approx(F.linear(x, w, bias))
        if not (got - want).abs().max().item() <= 1e-4:  # erf vs tanh GELU differ by ~5e-4
            return False
    return True


def build_decoder(model: MoondreamModel, kind: str, *, page_size: int, device: torch.device) -> TextDecoder:
    """The decoder for ``kind`` (see module docstring); raises ValueError when a named
    kernel path cannot run here."""
    if kind not in DECODE_KERNELS:
        raise ValueError(f"decode_kernels must be one of {DECODE_KERNELS}, got {kind!r}")
    if kind == "torch" or (kind == "auto" and device.type != "cuda"):
        return TorchDecoder(model)
    reason = kernels_unavailable(device)
    if kind == "auto":
        reason = reason or attention_error(model, page_size, device)
        if reason:
            log.warning("decode attention: plain torch (%s)", reason)
            return TorchDecoder(model)
        return TritonDecoder(model, page_size, target_programs(device))
    if reason:
        raise ValueError(f"decode_kernels={kind!r}: {reason}")
    if kind == "triton":
        return TritonDecoder(model, page_size, target_programs(device))
    return FusedDecoder(model, page_size, target_programs(device), addmm_gelu=addmm_gelu_matches(device))
