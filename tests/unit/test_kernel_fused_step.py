"""The fused decode step's kernels and the three decoders, against plain torch.

CPU, Triton interpreter (see tests/conftest.py). The pointwise kernels are checked alone
(add3 + LayerNorm, rotary + paged K/V write), then whole decode steps: ``triton`` and
``fused`` against ``torch`` on the tiny model and on one moondream2-sized layer, hidden
states and the K/V each step wrote.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from moonpipe.config import ModelConfig, RegionConfig, TextConfig
from moonpipe.kernels.decoders import FusedDecoder, TextDecoder, TorchDecoder, TritonDecoder
from moonpipe.kernels.pointwise import add3_layer_norm, rotary_kv_write
from moonpipe.kernels.select import (
    addmm_gelu_matches,
    attention_error,
    build_decoder,
    kernels_unavailable,
)
from moonpipe.model.checkpoint import preset_config
from moonpipe.model.layers import LAYER_NORM_EPS, apply_rotary, rotary_inv_freq
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.paged import position_slots
from moonpipe.model.weights import build_random_model

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 2**-6)])
@pytest.mark.parametrize("dim", [128, 96])
def test_add3_layer_norm(dtype: torch.dtype, tol: float, dim: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x, a, m = (torch.randn((5, dim), generator=gen).to(dtype) for _ in range(3))
    w, b = torch.randn(dim, generator=gen).to(dtype), torch.randn(dim, generator=gen).to(dtype)
    total, h = add3_layer_norm(x, a, m, w, b, LAYER_NORM_EPS)
    want_total = x + a + m
    if dtype == torch.float32:
        assert torch.equal(total, want_total)  # same roundings as PyTorch's (x + a) + m
    else:  # the interpreter rounds bf16 toward zero (a GPU to nearest): twice, so 2 ulps
        assert torch.allclose(total.float(), want_total.float(), rtol=2**-5, atol=1e-2)
    want_h = F.layer_norm(total.float(), (dim,), w.float(), b.float(), LAYER_NORM_EPS)
    assert h is not None and torch.allclose(h.float(), want_h, rtol=tol, atol=tol)
    only, none = add3_layer_norm(x, a, m, None, None, LAYER_NORM_EPS)
    assert none is None and torch.equal(only, total)


@pytest.mark.parametrize(("heads", "dtype"), [(2, torch.float32), (32, torch.bfloat16), (3, torch.float16)])
def test_rotary_kv_write(heads: int, dtype: torch.dtype) -> None:
    page_size, rows, hd = 16, 4, 64
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn((rows, 3 * heads * hd), generator=gen).to(dtype)
    table = (torch.randperm(12, generator=gen) + 1)[:8].view(rows, 2)
    positions = torch.tensor([0, 15, 16, 31])  # both sides of a page boundary
    k_flat = torch.zeros((13 * page_size, heads, hd), dtype=dtype)
    v_flat = torch.zeros_like(k_flat)
    q = rotary_kv_write(qkv, positions, table, rotary_inv_freq(32, 10000.0, torch.device("cpu")),
                        k_flat, v_flat, page_size)
    q_ref, k_ref, v_ref = (part.view(rows, 1, heads, hd) for part in qkv.split(heads * hd, dim=-1))
    q_ref = apply_rotary(q_ref, positions[:, None])[:, 0]
    k_ref = apply_rotary(k_ref, positions[:, None])[:, 0]
    slots = position_slots(table, positions, page_size)
    # bf16/fp16: the interpreter rounds toward zero where a GPU rounds to nearest (1 ulp)
    rtol = {torch.float32: 1e-6, torch.float16: 2**-9, torch.bfloat16: 2**-6}[dtype]
    assert torch.allclose(q.float(), q_ref.float(), rtol=rtol, atol=1e-6)
    assert torch.allclose(k_flat[slots].float(), k_ref.float(), rtol=rtol, atol=1e-6)
    assert torch.equal(v_flat[slots], v_ref[:, 0])
    untouched = torch.ones(k_flat.shape[0], dtype=torch.bool)
    untouched[slots] = False
    assert not k_flat[untouched].any() and not v_flat[untouched].any()


def md2_layer_config() -> ModelConfig:
    """One moondream2-sized text layer (2048 wide, 32 heads) with a small vocab and vision."""
    tiny = preset_config("tiny")
    text = TextConfig(n_layers=1, vocab_size=512)
    return ModelConfig(text=text, vision=replace(tiny.vision, proj_out_dim=2048),
                       region=RegionConfig(inner_dim=64))


def decode_inputs(model: MoondreamModel, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A random cache and a decode step over it: (embeds, positions, k, v, table)."""
    cfg = model.text.cfg
    dtype = model.text.wte.dtype
    page_size, width = 16, 6
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg.n_layers, 1 + batch * width, page_size, cfg.n_heads, cfg.head_dim)
    k, v = torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)
    table = (torch.randperm(batch * width, generator=gen) + 1).view(batch, width)
    positions = torch.randint(0, width * page_size, (batch,), generator=gen)
    positions[0] = 0
    embeds = torch.randn((batch, cfg.dim), generator=gen).to(dtype)
    return embeds, positions, k, v, table


def run_decoder(decoder: TextDecoder, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    embeds, positions, k, v, table = inputs
    k, v = k.clone(), v.clone()
    with torch.inference_mode():
        hidden = decoder(embeds, positions, k, v, table)
    return hidden, k, v


@pytest.mark.parametrize(("preset", "dtype", "tol"), [
    ("tiny", torch.float32, 1e-5),
    ("tiny", torch.bfloat16, 5e-2),
    ("md2-layer", torch.float32, 1e-5),
])
def test_decoders_match_plain_torch(preset: str, dtype: torch.dtype, tol: float) -> None:
    cfg = md2_layer_config() if preset == "md2-layer" else preset_config("tiny")
    model = build_random_model(cfg, seed=3, dtype=dtype)
    inputs = decode_inputs(model, batch=3, seed=4)
    want_h, want_k, want_v = run_decoder(TorchDecoder(model), inputs)
    scale = want_h.float().abs().max().item()
    for decoder in (TritonDecoder(model, 16, programs=1, num_splits=2),
                    FusedDecoder(model, 16, programs=1, addmm_gelu=False)):
        hidden, k, v = run_decoder(decoder, inputs)
        err = (hidden.float() - want_h.float()).abs().max().item() / scale
        assert err <= tol, f"{decoder.kind}: relative error {err}"
        for got, want in ((k, want_k), (v, want_v)):  # the K/V this step wrote, every layer
            assert (got.float() - want.float()).abs().max().item() <= tol


def test_build_decoder_choices() -> None:
    model = build_random_model(preset_config("tiny"), seed=0)
    cpu = torch.device("cpu")
    assert build_decoder(model, "auto", page_size=16, device=cpu).kind == "torch"  # CPU default
    assert build_decoder(model, "torch", page_size=16, device=cpu).kind == "torch"
    assert build_decoder(model, "triton", page_size=16, device=cpu).kind == "triton"
    fused = build_decoder(model, "fused", page_size=16, device=cpu)
    assert isinstance(fused, FusedDecoder) and fused.addmm_gelu is False  # CPU's addmm GELU is erf
    with pytest.raises(ValueError, match="decode_kernels"):
        build_decoder(model, "cuda-magic", page_size=16, device=cpu)


def test_kernels_need_the_interpreter_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_random_model(preset_config("tiny"), seed=0)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in (kernels_unavailable(torch.device("cpu")) or "")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        build_decoder(model, "fused", page_size=16, device=torch.device("cpu"))


def test_startup_checks() -> None:
    model = build_random_model(preset_config("tiny"), seed=0)
    assert attention_error(model, 16, torch.device("cpu")) is None
    assert addmm_gelu_matches(torch.device("cpu")) is False
