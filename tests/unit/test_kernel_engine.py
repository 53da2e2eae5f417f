"""Kernels inside the engine: greedy outputs with ``decode_kernels`` triton / fused equal
the plain-torch ones (CPU, Triton interpreter), and every kernel compiles for sm_90."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_support import png_bytes, run_all, signature

from moonpipe.config import EngineConfig
from moonpipe.engine import Engine
from moonpipe.model.checkpoint import ensure_checkpoint
from moonpipe.request import Request

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
SKILLS = [("caption", ""), ("query", "what is here?"), ("point", "cat"), ("detect", "dog"), ("segment", "cup")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny")


def outputs(ckpt: Path, kernels: str, pad_buckets: bool = False) -> dict[str, tuple[object, ...]]:
    img = png_bytes(7)
    requests = [Request(f"r-{skill}", skill, img, prompt, max_tokens=10, temperature=0.0) for skill, prompt in SKILLS]
    with Engine(EngineConfig(checkpoint=str(ckpt), decode_kernels=kernels, max_batch_size=8)) as engine:
        assert engine.runner.work.decoder.kind == ("torch" if kernels == "auto" else kernels)
        engine.runner.pad_buckets = pad_buckets  # the CUDA-graph path's padding rows
        return {rid: signature(sink.result) for rid, sink in run_all(engine, requests).items()}


def test_decode_outputs_are_unchanged_by_the_kernels(ckpt: Path) -> None:
    want = outputs(ckpt, "auto")  # CPU: plain torch
    assert want["r-caption"][1] and want["r-query"][1]  # text was generated
    assert outputs(ckpt, "triton") == want
    assert outputs(ckpt, "fused", pad_buckets=True) == want


def test_engine_refuses_kernels_it_cannot_run(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        Engine(EngineConfig(checkpoint=str(ckpt), decode_kernels="triton"))
    with pytest.raises(ValueError, match="decode_kernels must be one of"):
        EngineConfig(decode_kernels="cuda")


def test_kernels_compile_for_hopper() -> None:
    """Triton's real compiler (not the interpreter) accepts every kernel variant the
    launchers use, down to an sm_90 cubin (tests/unit/kernel_aot.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "unit" / "kernel_aot.py"), "90"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "compiled 24 kernel variants for sm_90" in done.stdout
