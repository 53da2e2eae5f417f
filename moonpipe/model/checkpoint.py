"""Deterministic synthetic checkpoints: ``config.json`` + ``model.safetensors`` + ``tokenizer.json``.

Presets:
  * ``tiny``  - the golden md2-tiny sizes (text 128 wide, 2 layers; vision 48 wide, 27
    layers); seconds to make; the default for tests and ``make serve``.
  * ``small`` - a CPU benchmark model dominated by text matmuls (text 1024 wide, ff 4096,
    4 layers, 16 heads; tiny vision; region inner 256).
  * ``md2``   - the real moondream2 sizes (1.93 B parameters).
Weights follow ``moonpipe/model/init.py`` and are streamed to disk one tensor at a time (the
safetensors format is written directly), so even ``md2`` never needs the model in memory.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from moonpipe.config import ModelConfig, RegionConfig, TextConfig, VisionConfig, torch_dtype
from moonpipe.errors import CheckpointError
from moonpipe.model.init import PRESET_EOS_BIAS, init_tensor
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.synth_tokenizer import build_tokenizer
from moonpipe.model.weights import WEIGHTS_FILE

__all__ = ["CHECKPOINT_FILES", "PRESETS", "ensure_checkpoint", "make_checkpoint", "preset_config"]

CHECKPOINT_FILES = ("config.json", WEIGHTS_FILE, "tokenizer.json")
PRESETS = ("tiny", "small", "md2")
_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}

_TINY_VISION = VisionConfig(
    enc_dim=48, enc_n_layers=27, enc_ff_dim=128, enc_n_heads=4, proj_out_dim=128,
    max_crops=6, proj_inner_dim=128,
)


def preset_config(preset: str) -> ModelConfig:
    """The ModelConfig of a preset name (see module docstring)."""
    if preset == "tiny":
        text = TextConfig(dim=128, ff_dim=256, n_layers=2, vocab_size=32768, n_heads=2, n_kv_heads=2)
        return ModelConfig(text=text, vision=_TINY_VISION, region=RegionConfig(dim=128, inner_dim=64))
    if preset == "small":
        text = TextConfig(dim=1024, ff_dim=4096, n_layers=4, vocab_size=32768, n_heads=16, n_kv_heads=16)
        vision = replace(_TINY_VISION, proj_out_dim=1024)
        return ModelConfig(text=text, vision=vision, region=RegionConfig(dim=1024, inner_dim=256))
    if preset == "md2":
        return ModelConfig()
    raise ValueError(f"unknown checkpoint preset {preset!r}; choose one of {', '.join(PRESETS)}")


def _config_json(config: ModelConfig, preset: str, seed: int, dtype: str) -> dict[str, Any]:
    data = config.to_dict()
    return {
        "_comment": "Synthetic moonpipe checkpoint: random weights, meaningless outputs. "
        "Sections text/vision/region/tokenizer use the reference's MoondreamConfig field names.",
        "format": "moonpipe-synthetic/1",
        "preset": preset,
        "seed": seed,
        "eos_logit_bias": PRESET_EOS_BIAS[preset],
        "checkpoint": {"file": WEIGHTS_FILE, "dtype": dtype, "key_style": "HF moondream2 (model.*)"},
        "text": data["text"],
        "vision": data["vision"],
        "region": data["region"],
        "tokenizer": data["tokenizer"],
    }


def _progress(shapes: dict[str, tuple[int, ...]], *, enabled: bool) -> Iterable[tuple[str, tuple[int, ...]]]:
    """The tensors to write, with a progress bar (tqdm, if installed: the GPU machine has
    none, so a plain line every 10% there)."""
    items = shapes.items()
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return _plain_progress(list(items))
    return tqdm(items, desc="weights", unit="tensor")


def _plain_progress(items: list[tuple[str, tuple[int, ...]]]) -> Iterator[tuple[str, tuple[int, ...]]]:
    step = max(1, len(items) // 10)
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == len(items):
            print(f"weights: {i}/{len(items)} tensors", file=sys.stderr, flush=True)


def _write_safetensors(
    path: Path, config: ModelConfig, *, seed: int, dtype: torch.dtype, eos_bias: float, progress: bool
) -> None:
    """Stream tensors to ``path`` in safetensors layout: u64 header size, JSON header, data."""
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in MoondreamModel(config).state_dict().items()}
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "generator": "moonpipe checkpoint make"}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = itemsize * int(torch.Size(shape).numel())
        header[f"model.{name}"] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes, as safetensors does
    tmp = path.with_suffix(".tmp")
    eos = config.tokenizer.eos_id
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in _progress(shapes, enabled=progress):
            t = init_tensor(name, shape, seed=seed, dtype=dtype, eos_id=eos, eos_bias=eos_bias)
            f.write(t.contiguous().view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)


def make_checkpoint(
    out_dir: str | Path,
    *,
    preset: str = "tiny",
    seed: int = 0,
    dtype: str = "float16",
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write a synthetic checkpoint directory; refuses to overwrite one unless ``force``."""
    out = Path(out_dir)
    config = preset_config(preset)
    torch_dt = torch_dtype(dtype)  # ValueError naming the choices
    existing = [name for name in CHECKPOINT_FILES if (out / name).exists()]
    if existing and not force:
        raise CheckpointError(f"{out}: already holds {', '.join(existing)}; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    show = preset == "md2" if progress is None else progress
    _write_safetensors(out / WEIGHTS_FILE, config, seed=seed, dtype=torch_dt,
                       eos_bias=PRESET_EOS_BIAS[preset], progress=show)
    build_tokenizer(config.text.vocab_size, seed=seed).save(str(out / "tokenizer.json"))
    # config.json last: its presence marks a complete checkpoint.
    (out / "config.json").write_text(json.dumps(_config_json(config, preset, seed, dtype), indent=1) + "\n")
    return out


def ensure_checkpoint(path: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """Return ``path``, making a synthetic checkpoint there if any checkpoint file is missing."""
    out = Path(path)
    if all((out / name).is_file() for name in CHECKPOINT_FILES):
        return out
    return make_checkpoint(out, preset=preset, seed=seed, force=True)
