"""GPU checks (marker ``gpu``): skipped cleanly without CUDA. Run on a lent GPU with
``pytest -m gpu tests/gpu``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from engine_support import png_bytes, run_all, signature

from moonpipe.bench.common import build_bench_engine
from moonpipe.config import EngineConfig
from moonpipe.engine import Engine
from moonpipe.model.checkpoint import ensure_checkpoint
from moonpipe.request import Request

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

SKILLS = [("caption", ""), ("query", "what?"), ("point", "cat"), ("detect", "dog"), ("segment", "cup")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_checkpoint(tmp_path_factory.mktemp("gpu") / "tiny", preset="tiny")


def requests(prefix: str, n_tokens: int = 24) -> list[Request]:
    img = png_bytes(1)
    return [Request(f"{prefix}{s}", s, img, p, max_tokens=n_tokens, temperature=0.0) for s, p in SKILLS]


@pytest.fixture(scope="module")
def eager_reference(ckpt: Path) -> dict[str, tuple[object, ...]]:
    """Greedy outputs of the plainest engine: eager, depth 1, plain-torch decode."""
    with Engine(EngineConfig(checkpoint=str(ckpt), device="cuda", dtype="float32", cuda_graphs=False,
                             pipeline_depth=1, decode_kernels="torch")) as eager:
        return {k: signature(s.result) for k, s in run_all(eager, requests("g-")).items()}


def cuda_engine(ckpt: Path, kernels: str = "auto") -> Engine:
    return Engine(EngineConfig(checkpoint=str(ckpt), device="cuda", dtype="float32", max_batch_size=8,
                               decode_kernels=kernels))


@pytest.mark.parametrize("kernels", ["auto", "torch", "triton", "fused"])
def test_cuda_graph_engine_matches_eager_and_depth1(ckpt: Path, kernels: str,
                                                    eager_reference: dict[str, tuple[object, ...]]) -> None:
    with cuda_engine(ckpt, kernels) as eng:
        assert eng.runner.graphs is not None and len(eng.runner.graphs) > 0
        assert eng.runner.work.decoder.kind == ("triton" if kernels == "auto" else kernels)
        got = {k: signature(s.result) for k, s in run_all(eng, requests("g-")).items()}
    assert got == eager_reference


def test_bf16_runs(ckpt: Path) -> None:
    with Engine(EngineConfig(checkpoint=str(ckpt), device="cuda", dtype="bfloat16")) as eng:
        res = run_all(eng, requests("b-", 8))
        assert all(s.result.num_output_tokens >= 1 for s in res.values())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prefix_cache_hits_give_the_outputs_of_a_fresh_prefill(ckpt: Path, dtype: str) -> None:
    """One request at a time about one image: with the cache, all but the first share its
    prefix pages and copy its boundary page on the device (CUDA graphs on)."""
    outputs = {}
    for cache in (0, 16):
        with Engine(EngineConfig(checkpoint=str(ckpt), device="cuda", dtype=dtype, prefix_cache_size=cache)) as eng:
            got = {}
            for r in requests("p-"):
                got.update({k: signature(s.result) for k, s in run_all(eng, [r]).items()})
            assert eng.stats().prefix_cache_hits == (len(SKILLS) - 1 if cache else 0)
            outputs[cache] = got
    assert outputs[16] == outputs[0]


def _warm(engine: Engine) -> None:
    """Fill the image-embedding cache and every allocation the loop will need."""
    run_all(engine, [Request(f"w{j}", "caption", png_bytes(j), max_tokens=16) for j in range(8)])
    torch.cuda.synchronize()


@pytest.mark.parametrize("kernels", ["torch", "triton", "fused"])
def test_decode_loop_has_no_hidden_sync(ckpt: Path, kernels: str) -> None:
    with cuda_engine(ckpt, kernels) as eng:
        _warm(eng)
        torch.cuda.set_sync_debug_mode("error")
        try:
            batch = [Request(f"s{j}", "caption", png_bytes(j), max_tokens=64, temperature=0.0) for j in range(8)]
            for s in run_all(eng, batch, timeout=300).values():
                assert s.result.finish_reason in ("stop", "length")
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_no_memory_growth_over_10k_decode_steps() -> None:
    """10k+ decode steps after warm-up (9 rounds of 8 captions of exactly 1250 tokens: the
    benchmark weights ban eos), with the sync check on, on the default decode path."""
    with build_bench_engine("tiny", device="cuda", dtype="float32", depth=2, max_batch_size=8,
                            max_positions=2048) as eng:
        _warm(eng)
        before = torch.cuda.memory_allocated()
        eng.reset_step_totals()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(9):
                batch = [Request(f"long{i}-{j}", "caption", png_bytes(j), max_tokens=1250, temperature=0.0)
                         for j in range(8)]
                for s in run_all(eng, batch, timeout=600).values():
                    assert s.result.num_output_tokens == 1250
        finally:
            torch.cuda.set_sync_debug_mode("default")
        steps = eng.reset_step_totals().decode_steps
        torch.cuda.synchronize()
        grown = torch.cuda.memory_allocated() - before
    print(f"{steps} decode steps, memory allocated grew by {grown} bytes")
    assert steps >= 10_000
    assert grown <= (1 << 20)
