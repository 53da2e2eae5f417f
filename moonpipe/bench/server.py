"""A fixed-length checkpoint and a real tritonserver for the load benchmarks.

The server loads weights from a directory, so the "eos can never win" trick of
:mod:`moonpipe.bench.common` (lm_head bias of eos = -1e4) is applied to a copy of the
synthetic checkpoint on disk: every text request then generates exactly ``max_tokens``
and in-process and Triton runs do the same work. The model repository is copied too, with
the engine parameters the benchmark needs (``max_batch_size``) set in its config.pbtxt;
the project's own ``model_repository/`` is never modified.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from moonpipe.model.checkpoint import CHECKPOINT_FILES, ensure_checkpoint
from moonpipe.model.weights import WEIGHTS_FILE
from moonpipe.repository import render, set_parameter
from moonpipe.triton_local import TritonServer, free_port

__all__ = [
    "MODEL_REPOSITORY",
    "bench_model_repository",
    "fixed_length_checkpoint",
    "running_server",
    "set_parameter",
]

MODEL_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
EOS_BIAS = -1e4


def fixed_length_checkpoint(out_dir: Path, *, preset: str = "tiny",
                            source: Path | None = None) -> Path:
    """Copy the synthetic ``preset`` checkpoint (made at ``source``, default
    ``checkpoints/<preset>``, if missing) into ``out_dir`` with eos banned."""
    import torch
    from safetensors.torch import load_file, save_file

    src = ensure_checkpoint(source or Path("checkpoints") / preset, preset=preset)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        if name != WEIGHTS_FILE:
            shutil.copy2(src / name, out_dir / name)
    eos_id = int(json.loads((src / "config.json").read_text())["tokenizer"]["eos_id"])
    tensors = load_file(str(src / WEIGHTS_FILE))
    key = "model.text.lm_head.bias"
    if key not in tensors:
        raise KeyError(f"{src / WEIGHTS_FILE}: no tensor {key!r} to ban eos with")
    with torch.no_grad():
        tensors[key][eos_id] = EOS_BIAS
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    return out_dir


def bench_model_repository(out_dir: Path, checkpoint: Path, parameters: Mapping[str, str],
                           source: Path = MODEL_REPOSITORY) -> Path:
    """Copy ``source`` to ``out_dir`` with ``checkpoint`` and ``parameters`` set for every model."""
    render(source, out_dir, {"checkpoint": str(checkpoint.resolve()), **parameters})
    return out_dir


@contextlib.contextmanager
def running_server(repository: Path, checkpoint: Path, log_path: Path | None = None,
                   ready_timeout: float = 180.0) -> Iterator[TritonServer]:
    """Start tritonserver on free loopback ports over ``repository``; stop it on exit."""
    server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), env={"MOONPIPE_CHECKPOINT": str(checkpoint.resolve())},
                          log_path=log_path)
    server.start()
    try:
        server.wait_ready(timeout=ready_timeout)
        yield server
    finally:
        server.stop()
        server.cleanup_log()
