"""Shared pieces of the benchmarks: in-memory engines, a test image, device names."""

from __future__ import annotations

import functools
import io
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from moonpipe.config import EngineConfig, ModelConfig, pages_needed, torch_dtype
from moonpipe.engine import Engine
from moonpipe.model.checkpoint import preset_config
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.synth_tokenizer import build_tokenizer
from moonpipe.model.tokenizer import Tokenizer
from moonpipe.model.weights import build_random_model

__all__ = ["LOCAL_RESULTS_DIR", "RESULTS_DIR", "bench_image", "bench_model", "build_bench_engine", "device_name",
           "slug"]

RESULTS_DIR = Path("bench/results")  # the committed results; runs write here only when asked
LOCAL_RESULTS_DIR = Path("bench/out")  # untracked (.gitignore): where runs write by default


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40]


def bench_image(seed: int = 0, size: tuple[int, int] = (640, 480)) -> bytes:
    """A deterministic RGB PNG (smooth gradients plus noise, like a photo's statistics)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=2)
def bench_model(preset: str, device: str, dtype: str) -> tuple[MoondreamModel, ModelConfig, Tokenizer]:
    """Random weights of ``preset`` made on ``device`` (md2 in bf16 on a GPU: ~4 GB, made in
    seconds, no file), eos banned; cached, so engines of one run share them."""
    cfg = preset_config(preset)
    model = build_random_model(cfg, seed=0, dtype=torch_dtype(dtype), device=device)
    # Fixed-length workload: eos can never win, so every request generates max_tokens and
    # depth 1 and depth 2 do exactly the same work (L is a setting, not luck).
    with torch.no_grad():
        model.text.lm_head.bias[cfg.tokenizer.eos_id] = -1e4
    tok = build_tokenizer(cfg.text.vocab_size)
    return model, cfg, Tokenizer(tok)


def build_bench_engine(preset: str, *, device: str, dtype: str, depth: int, max_batch_size: int,
                       cuda_graphs: bool = True, max_positions: int = 1024,
                       cpu_worker: str = "thread", decode_kernels: str = "auto",
                       prefix_cache_size: int = 0) -> Engine:
    """An engine over random weights of ``preset`` (no checkpoint file), KV sized for the run;
    the prefix cache off unless asked for (benchmarks measure it on purpose)."""
    model, cfg, tok = bench_model(preset, device, dtype)
    page_size = 16
    num_pages = max_batch_size * pages_needed(max_positions, page_size) + 1
    config = EngineConfig(device=device, dtype=dtype, max_batch_size=max_batch_size,
                          num_kv_pages=num_pages, kv_page_size=page_size, pipeline_depth=depth,
                          cuda_graphs=cuda_graphs, cpu_worker=cpu_worker, decode_kernels=decode_kernels,
                          prefix_cache_size=prefix_cache_size)
    return Engine(config, model=model, tokenizer=tok, model_config=cfg)
