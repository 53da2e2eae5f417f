"""GPU checks (marker ``gpu``): skipped cleanly without CUDA. Run on a lent GPU with
``pytest -m gpu tests/gpu``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from engine_support import png_bytes, run_all, signature

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


@pytest.fixture()
def cuda_engine(ckpt: Path) -> Iterator[Engine]:
    eng = Engine(EngineConfig(checkpoint=str(ckpt), device="cuda", dtype="float32", max_batch_size=8))
    yield eng
    eng.shutdown()


def test_cuda_graph_engine_matches_eager_and_depth1(ckpt: Path, cuda_engine: Engine) -> None:
    assert cuda_engine.runner.graphs is not None and len(cuda_engine.runner.graphs) > 0
    got = {k: signature(s.result) for k, s in run_all(cuda_engine, requests("g-")).items()}
    with Engine(EngineConfig(checkpoint=str(ckpt), device="cuda", dtype="float32", cuda_graphs=False,
                             pipeline_depth=1)) as eager:
        want = {k: signature(s.result) for k, s in run_all(eager, requests("g-")).items()}
    assert got == want


def test_bf16_runs(ckpt: Path) -> None:
    with Engine(EngineConfig(checkpoint=str(ckpt), device="cuda", dtype="bfloat16")) as eng:
        res = run_all(eng, requests("b-", 8))
        assert all(s.result.num_output_tokens >= 1 for s in res.values())


def test_decode_loop_has_no_hidden_sync_and_no_memory_growth(cuda_engine: Engine) -> None:
    # warm-up with the same images (the image-embedding cache fills here, not below)
    run_all(cuda_engine, [Request(f"w{j}", "caption", png_bytes(j), max_tokens=16) for j in range(8)])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(4):  # ~10k decode rows over 8 concurrent long requests
            batch = [Request(f"long{i}-{j}", "caption", png_bytes(j), max_tokens=320, temperature=0.0)
                     for j in range(8)]
            for s in run_all(cuda_engine, batch, timeout=600).values():
                assert s.result.finish_reason in ("stop", "length")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + (1 << 20)
