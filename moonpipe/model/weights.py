"""Load a moondream2 checkpoint (safetensors, real key names) or build random weights.

``load_model`` builds the module on the meta device and assigns each tensor as it is read
from the memory-mapped file, so the host never holds a second full copy of the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from moonpipe.config import ModelConfig
from moonpipe.errors import CheckpointError
from moonpipe.model.init import init_tensor
from moonpipe.model.moondream import MoondreamModel

__all__ = ["WEIGHTS_FILE", "build_random_model", "canonical_key", "load_model"]

WEIGHTS_FILE = "model.safetensors"


def canonical_key(key: str) -> str:
    """Checkpoint key -> module key: strip a leading ``model.`` and any ``._orig_mod``."""
    key = key.replace("._orig_mod", "").replace("_orig_mod.", "")
    return key[len("model."):] if key.startswith("model.") else key


def _empty_model(config: ModelConfig) -> MoondreamModel:
    with torch.device("meta"):
        return MoondreamModel(config)


def _assign(model: MoondreamModel, tensors: dict[str, torch.Tensor]) -> MoondreamModel:
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> MoondreamModel:
    """Load ``path/model.safetensors`` (config from ``path/config.json``, full size if absent).

    Raises CheckpointError naming the file when it is missing or unreadable, and naming the key
    for missing, unexpected or mis-shaped tensors.
    """
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() or not path.suffix else path
    config_dir = weights.parent
    try:
        config = ModelConfig.from_dir(config_dir)
    except ValueError as exc:
        raise CheckpointError(f"{config_dir / 'config.json'}: {exc}") from exc
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint file not found")
    model = _empty_model(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    try:
        handle = safe_open(str(weights), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises SafetensorError / OSError variants
        raise CheckpointError(f"{weights}: cannot read safetensors file: {exc}") from exc
    with handle as f:
        for raw in f.keys():
            key = canonical_key(raw)
            if key not in expected:
                raise CheckpointError(f"{weights}: unexpected tensor {raw!r}")
            shape = tuple(f.get_slice(raw).get_shape())
            if shape != expected[key]:
                raise CheckpointError(
                    f"{weights}: tensor {raw!r} has shape {list(shape)}, expected {list(expected[key])}"
                )
            tensors[key] = f.get_tensor(raw).to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{weights}: missing tensor 'model.{missing[0]}'{more}")
    return _assign(model, tensors)


def build_random_model(
    config: ModelConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    eos_bias: float = 0.0,
) -> MoondreamModel:
    """A model with deterministic synthetic weights generated directly on ``device``.

    Same scheme as ``moonpipe checkpoint make`` (moonpipe/model/init.py); no file needed. The
    values are reproducible per device type (CPU and CUDA generators differ). ``eos_bias``
    defaults to 0 (generations run to max_tokens, what benchmarks want); pass
    ``PRESET_EOS_BIAS[preset]`` to match a checkpoint made by ``moonpipe checkpoint make``.
    """
    model = _empty_model(config)
    eos = config.tokenizer.eos_id
    tensors = {
        name: init_tensor(name, tuple(t.shape), seed=seed, dtype=dtype, device=device, eos_id=eos, eos_bias=eos_bias)
        for name, t in model.state_dict().items()
    }
    return _assign(model, tensors)
