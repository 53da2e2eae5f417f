"""The Triton kernels on a real GPU (marker ``gpu``; skipped without CUDA).

The same comparisons the CPU tests make under the interpreter, now compiled: the paged
attention kernel against plain torch with the device's own split counts, the triton and
fused decode steps against the torch one at moondream2 widths in bf16 and fp32, and the
bf16-vs-fp32 agreement of each decode path on the tiny model.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_kernel_decode_attention import TOL, make_case, reference
from test_kernel_fused_step import decode_inputs

from moonpipe.kernels.decode_attention import choose_num_splits, paged_decode_attention
from moonpipe.kernels.decoders import (
    FusedDecoder,
    TextDecoder,
    TorchDecoder,
    TritonDecoder,
    target_programs,
)
from moonpipe.kernels.select import addmm_gelu_matches, attention_error
from moonpipe.model.checkpoint import preset_config
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.weights import build_random_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("lengths", "page_size", "heads"), [
    ([1, 15, 16, 17, 1000], 16, 32),
    ([1 + (i * 53) % 2000 for i in range(64)], 16, 32),
    ([3, 700, 2048], 7, 2),
])
def test_attention_kernel_matches_torch(lengths: list[int], page_size: int, heads: int, dtype: torch.dtype) -> None:
    q, k, v, table, positions = (t.to(CUDA) for t in make_case(lengths, page_size, heads, dtype))
    splits = choose_num_splits(len(lengths), heads, table.shape[1] * page_size, target_programs(CUDA))
    for num_splits in sorted({1, splits}):
        got = paged_decode_attention(q, k, v, table, positions, page_size, num_splits)
        want = reference(q, k, v, table, positions, page_size)
        err = (got.float() - want).abs().max().item()
        assert err <= TOL[dtype], f"splits {num_splits}: max error {err}"


def test_startup_checks_pass_on_this_gpu() -> None:
    model = build_random_model(preset_config("tiny"), seed=0, dtype=torch.bfloat16, device=CUDA)
    assert attention_error(model, 16, CUDA) is None
    print(f"addmm GELU epilogue computes GELU(tanh): {addmm_gelu_matches(CUDA)}")


def _md2_layers(dtype: torch.dtype) -> MoondreamModel:
    cfg = preset_config("md2")
    small = replace(cfg, text=replace(cfg.text, n_layers=2))
    return build_random_model(small, seed=3, dtype=dtype, device=CUDA)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_decode_steps_match_torch_at_moondream2_width(dtype: torch.dtype, tol: float) -> None:
    model = _md2_layers(dtype)
    inputs = tuple(t.to(CUDA) for t in decode_inputs(model, batch=5, seed=4))
    embeds, positions, k0, v0, table = inputs
    with torch.inference_mode():
        want_k, want_v = k0.clone(), v0.clone()
        want = TorchDecoder(model)(embeds, positions, want_k, want_v, table)
        scale = want.float().abs().max().item()
        for decoder in (TritonDecoder(model, 16, target_programs(CUDA)),
                        FusedDecoder(model, 16, target_programs(CUDA), addmm_gelu=addmm_gelu_matches(CUDA))):
            k, v = k0.clone(), v0.clone()
            got = decoder(embeds, positions, k, v, table)
            err = (got.float() - want.float()).abs().max().item() / scale
            assert err <= tol, f"{decoder.kind}: relative error {err}"
            for mine, ref in ((k, want_k), (v, want_v)):
                assert (mine.float() - ref.float()).abs().max().item() <= tol * 4


@pytest.mark.parametrize("kind", ["torch", "triton", "fused"])
def test_bf16_agrees_with_fp32_on_tiny(kind: str) -> None:
    hidden = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = build_random_model(preset_config("tiny"), seed=5, dtype=dtype, device=CUDA)
        embeds, positions, k, v, table = (t.to(CUDA) for t in decode_inputs(model, batch=4, seed=6))
        decoders: dict[str, TextDecoder] = {
            "torch": TorchDecoder(model), "triton": TritonDecoder(model, 16, target_programs(CUDA)),
            "fused": FusedDecoder(model, 16, target_programs(CUDA), addmm_gelu=False)}
        decoder = decoders[kind]
        with torch.inference_mode():
            hidden[dtype] = decoder(embeds, positions, k, v, table).float()
    a, b = hidden[torch.float32], hidden[torch.bfloat16]
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
    assert cosine > 0.99, f"{kind}: bf16 vs fp32 cosine similarity {cosine}"
