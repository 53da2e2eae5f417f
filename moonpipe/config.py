"""Frozen, validated configuration for the model and the engine.

One dataclass per layer. Model sections use the field names of Moondream's reference
``MoondreamConfig`` (text / vision / region / tokenizer) so a ``config.json`` written for
the reference (as in ``tests/data/golden/md2-tiny``) loads unchanged. Defaults are the real
moondream2 sizes (a real snapshot directory without ``config.json`` loads as full size).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "DECODE_KERNELS",
    "DTYPE_NAMES",
    "EngineConfig",
    "KVLayout",
    "ModelConfig",
    "RegionConfig",
    "TextConfig",
    "TokenizerConfig",
    "VisionConfig",
    "pages_needed",
    "torch_dtype",
]


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, slots=True)
class TextConfig:
    """Text decoder sizes (moondream2: 2048 wide, 24 layers, 32 heads of 64)."""

    dim: int = 2048
    ff_dim: int = 8192
    n_layers: int = 24
    vocab_size: int = 51200
    max_context: int = 2048
    n_heads: int = 32
    n_kv_heads: int = 32
    prefix_attn: int = 730  # BOS + the image tokens: the prefix attended bidirectionally
    group_size: int | None = None

    def __post_init__(self) -> None:
        _positive(self, "dim", "ff_dim", "n_layers", "vocab_size", "max_context", "n_heads")
        if self.n_kv_heads != self.n_heads:
            raise ValueError("TextConfig: grouped-query attention (n_kv_heads != n_heads) is not supported")
        if self.dim % self.n_heads != 0 or self.dim // self.n_heads != 64:
            raise ValueError(
                f"TextConfig: head_dim = dim / n_heads must be 64 (rotary dim 32 is hard-coded), "
                f"got {self.dim}/{self.n_heads}"
            )
        if self.group_size is not None:
            raise ValueError("TextConfig: int4 quantised checkpoints (group_size) are not supported")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """SigLIP-style vision encoder sizes (moondream2: 1152 wide, 27 layers)."""

    enc_dim: int = 1152
    enc_patch_size: int = 14
    enc_n_layers: int = 27
    enc_ff_dim: int = 4304
    enc_n_heads: int = 16
    proj_out_dim: int = 2048
    crop_size: int = 378
    in_channels: int = 3
    max_crops: int = 12
    overlap_margin: int = 4
    proj_inner_dim: int = 8192

    def __post_init__(self) -> None:
        _positive(self, "enc_dim", "enc_n_layers", "enc_ff_dim", "enc_n_heads", "proj_out_dim",
                  "max_crops", "proj_inner_dim")
        if self.enc_dim % self.enc_n_heads != 0:
            raise ValueError("VisionConfig: enc_dim must be divisible by enc_n_heads")
        if (self.crop_size, self.enc_patch_size, self.in_channels) != (378, 14, 3):
            raise ValueError("VisionConfig: crop_size 378, patch 14 and 3 channels are fixed by moondream2")

    @property
    def num_image_tokens(self) -> int:
        """Tokens one image becomes: a 27 x 27 grid of patches."""
        return (self.crop_size // self.enc_patch_size) ** 2


@dataclass(frozen=True, slots=True)
class RegionConfig:
    """Region (spatial) model sizes: Fourier coordinate/size encoders and decoders."""

    dim: int = 2048
    coord_feat_dim: int = 256
    coord_out_dim: int = 1024
    size_feat_dim: int = 512
    size_out_dim: int = 2048
    inner_dim: int = 8192
    group_size: int | None = None

    def __post_init__(self) -> None:
        _positive(self, "dim", "coord_feat_dim", "coord_out_dim", "size_feat_dim", "size_out_dim",
                  "inner_dim")


@dataclass(frozen=True, slots=True)
class TokenizerConfig:
    """Special token ids and prompt templates (token-id lists), starmie-v1 layout."""

    bos_id: int = 0
    eos_id: int = 0
    answer_id: int = 3
    thinking_id: int = 4
    coord_id: int = 5
    size_id: int = 6
    start_ground_points_id: int = 7
    end_ground_id: int = 9
    templates: dict[str, Any] = field(default_factory=lambda: {
        "caption": {
            "short": [1, 32708, 2, 12492, 3],
            "normal": [1, 32708, 2, 6382, 3],
            "long": [1, 32708, 2, 4059, 3],
        },
        "query": {"prefix": [1, 15381, 2], "suffix": [3]},
        "detect": {"prefix": [1, 7235, 476, 2], "suffix": [3]},
        "point": {"prefix": [1, 2581, 2], "suffix": [3]},
        "segment": {"prefix": [1, 17374, 2], "suffix": [3]},
    })

    def __hash__(self) -> int:  # templates is a dict; hash the ids that matter
        return hash((self.bos_id, self.eos_id, self.answer_id, self.coord_id, self.size_id))


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The whole model: what ``config.json`` in a checkpoint directory describes."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        if self.text.prefix_attn != 1 + self.vision.num_image_tokens:
            raise ValueError(
                f"ModelConfig: text.prefix_attn must be 1 (BOS) + {self.vision.num_image_tokens} image "
                f"tokens, got {self.text.prefix_attn}"
            )
        if self.vision.proj_out_dim != self.text.dim:
            raise ValueError("ModelConfig: vision.proj_out_dim must equal text.dim")
        if self.region.dim != self.text.dim:
            raise ValueError("ModelConfig: region.dim must equal text.dim")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from the reference's nested dict; unknown top-level keys are ignored."""

        def section(typ: type, key: str) -> Any:
            raw = dict(data.get(key) or {})
            known = {f.name for f in fields(typ)}
            unknown = sorted(set(raw) - known)
            if unknown:
                raise ValueError(f"config.json: unknown field(s) in [{key}]: {', '.join(unknown)}")
            return typ(**raw)

        tok = dict(data.get("tokenizer") or {})
        templates = tok.get("templates")
        if templates is not None:
            merged = TokenizerConfig().templates
            merged.update(templates)
            tok["templates"] = merged
        data = {**data, "tokenizer": tok}
        return cls(
            text=section(TextConfig, "text"),
            vision=section(VisionConfig, "vision"),
            region=section(RegionConfig, "region"),
            tokenizer=section(TokenizerConfig, "tokenizer"),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read ``config.json`` from a checkpoint directory; full moondream2 sizes if absent."""
        cfg = Path(path) / "config.json"
        if not cfg.exists():
            return cls()
        try:
            data = json.loads(cfg.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{cfg}: not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def prefix_len(self) -> int:
        """KV positions before the prompt: BOS + the image tokens (``text.prefix_attn``)."""
        return self.text.prefix_attn


DTYPE_NAMES = ("float32", "float16", "bfloat16")  # each is also the name of a torch dtype


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` called ``name`` (one of ``DTYPE_NAMES``); ValueError otherwise."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    import torch  # here, so that the configuration stays importable without torch

    return getattr(torch, name)

_DEVICES = ("cpu", "cuda")
_CPU_WORKERS = ("thread", "process")
# The decode step's kernels (moonpipe/kernels/select.py): "auto" = the paged attention
# kernel on CUDA when it passes its start-up check, plain torch otherwise.
DECODE_KERNELS = ("auto", "torch", "triton", "fused")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs to start. Built in one place (CLI flags or config.pbtxt)."""

    checkpoint: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    max_batch_size: int = 8
    num_kv_pages: int = 0  # 0 = size automatically: max_batch_size full-context sequences
    kv_page_size: int = 16
    pipeline_depth: int = 2
    cuda_graphs: bool = True
    max_queue: int = 1024
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_scans: int = 32  # progressive JPEG scans (a normal one has about 10)
    max_image_decode_ms: int = 10_000  # time one image may take to decode
    image_decode_workers: int = 2  # threads that decode images off the submitting thread
    max_prompt_tokens: int = 512
    image_cache_size: int = 16
    # images whose prefix KV (BOS + image tokens) is kept and shared by later requests
    # about the same image, which then prefill only their prompt; 0 turns it off
    prefix_cache_size: int = 16
    seed: int = 0
    compute_threads: int = 1
    # CPU only: run forwards on a worker "thread" (shares the GIL with the scheduler) or
    # a worker "process" (its own interpreter and core: bookkeeping really overlaps; the
    # server's setting). "thread" is the library default: a process worker starts from a
    # fork server, which needs the calling program's main module to be import-safe
    # (``if __name__ == "__main__":``), as any multiprocessing program does.
    cpu_worker: str = "thread"
    # "auto" | "torch" | "triton" (paged attention kernel) | "fused" (kernel attention +
    # fused pointwise kernels; opt-in until verified on a GPU). On CPU "triton"/"fused"
    # need TRITON_INTERPRET=1 (the Triton interpreter: for tests).
    decode_kernels: str = "auto"

    def __post_init__(self) -> None:
        if self.device.split(":")[0] not in _DEVICES:
            raise ValueError(f"EngineConfig.device must be one of {_DEVICES} (optionally cuda:N), got {self.device!r}")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"EngineConfig.dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")
        if self.pipeline_depth not in (1, 2):
            raise ValueError(f"EngineConfig.pipeline_depth must be 1 (blocking) or 2 (pipelined), got {self.pipeline_depth}")
        _positive(self, "max_batch_size", "kv_page_size", "max_queue", "max_image_pixels",
                  "max_image_bytes", "max_image_scans", "max_image_decode_ms", "image_decode_workers",
                  "max_prompt_tokens", "image_cache_size", "compute_threads")
        if self.cpu_worker not in _CPU_WORKERS:
            raise ValueError(f"EngineConfig.cpu_worker must be one of {_CPU_WORKERS}, got {self.cpu_worker!r}")
        if self.prefix_cache_size < 0:
            raise ValueError(f"EngineConfig.prefix_cache_size must be >= 0 (0 = off), got {self.prefix_cache_size}")
        if self.decode_kernels not in DECODE_KERNELS:
            raise ValueError(f"EngineConfig.decode_kernels must be one of {DECODE_KERNELS}, got {self.decode_kernels!r}")
        if self.num_kv_pages < 0:
            raise ValueError(f"EngineConfig.num_kv_pages must be >= 0, got {self.num_kv_pages}")
        if self.max_batch_size > 256:
            raise ValueError("EngineConfig.max_batch_size must be <= 256")


def pages_needed(num_positions: int, page_size: int) -> int:
    """KV pages of ``page_size`` positions that hold ``num_positions`` (at least one)."""
    return max(1, -(-num_positions // page_size))


@dataclass(frozen=True, slots=True)
class KVLayout:
    """The paged KV cache's geometry: derived once from the two configs, then read by the
    runtime (tensor sizes), the scheduler (its page allocator) and ``Engine.submit``.

    Page 0 is a scratch page never handed out, so ``num_pages`` counts it and a single
    sequence can get at most ``num_pages - 1``.
    """

    page_size: int
    num_pages: int
    max_pages_per_seq: int
    prefix_len: int  # positions every request of an image shares: BOS + the image tokens

    def __post_init__(self) -> None:
        _positive(self, "page_size", "num_pages", "max_pages_per_seq", "prefix_len")
        if self.num_pages < 2:
            raise ValueError("KVLayout.num_pages must be >= 2 (page 0 is scratch)")

    @classmethod
    def from_configs(cls, engine: EngineConfig, model: ModelConfig) -> KVLayout:
        """``engine.num_kv_pages`` pages, or (0) enough for ``max_batch_size`` full contexts."""
        per_seq = pages_needed(model.text.max_context, engine.kv_page_size)
        num_pages = engine.num_kv_pages or engine.max_batch_size * per_seq + 1
        return cls(page_size=engine.kv_page_size, num_pages=num_pages, max_pages_per_seq=per_seq,
                   prefix_len=model.prefix_len)

    @property
    def num_shared_prefix_pages(self) -> int:
        """Pages that hold nothing but prefix positions (shared by a prefix-cache entry)."""
        return self.prefix_len // self.page_size

    def pages_needed(self, num_positions: int) -> int:
        """Pages that hold ``num_positions`` KV positions (at least one)."""
        return pages_needed(num_positions, self.page_size)

    @property
    def capacity(self) -> int:
        """Pages one sequence could ever get (all but the scratch page)."""
        return self.num_pages - 1
