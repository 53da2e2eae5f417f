"""Step ``kernels`` of the GPU check (``python -m moonpipe.gpucheck.kernels``).

On the device: the start-up checks the engine itself runs (the attention kernel against
plain torch in the model's dtype; whether ``_addmm_activation`` computes GELU(tanh)),
then the kernels of one decode step (batch 1, 800 positions) for each of ``torch``,
``triton`` and ``fused`` (``moonpipe/kernels/count.py``; on CUDA also the profiler's
count). For a model smaller than moondream2 the counts are also extrapolated to its 24
layers (op counts do not depend on widths): count(1 layer) + 23 x per-layer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from moonpipe.bench.common import bench_model
from moonpipe.config import EngineConfig, ModelConfig
from moonpipe.kernels.count import count_step
from moonpipe.kernels.select import addmm_gelu_matches, attention_error, kernels_unavailable
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.weights import build_random_model

__all__ = ["KINDS", "format_kernels", "main", "run"]

KINDS = ("torch", "triton", "fused")
MD2_LAYERS = 24


def _counts(model: MoondreamModel, cfg: ModelConfig, device: str, dtype: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        try:
            out[kind] = count_step(model, cfg, EngineConfig(device=device, dtype=dtype, decode_kernels=kind))
        except Exception as exc:  # one path failing must not hide the others' counts
            out[kind] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _md2_extrapolation(cfg: ModelConfig, device: str, dtype: str) -> dict[str, Any]:
    """Counts at 1 and 2 layers of ``cfg``'s widths -> the count at 24 layers."""
    per: dict[int, dict[str, Any]] = {}
    for layers in (1, 2):
        small = replace(cfg, text=replace(cfg.text, n_layers=layers))
        model = build_random_model(small, seed=0, dtype=torch.float32, device=device)
        per[layers] = _counts(model, small, device, "float32")
    out: dict[str, Any] = {}
    for kind in KINDS:
        one, two = per[1][kind], per[2][kind]
        if "error" in one or "error" in two:
            out[kind] = {"error": one.get("error") or two.get("error")}
            continue
        layer = two["forward"] - one["forward"]
        forward = one["forward"] + (MD2_LAYERS - 1) * layer
        out[kind] = {"per_layer": layer, "forward": forward, "sampling": one["sampling"],
                     "total": forward + one["sampling"]}
    return out


def run(device: str, model_name: str) -> dict[str, Any]:
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    t0 = time.perf_counter()
    model, cfg, _ = bench_model(model_name, device, dtype)
    dev = torch.device(device)
    doc: dict[str, Any] = {"device": device, "model": model_name, "dtype": dtype,
                           "weights_s": round(time.perf_counter() - t0, 2)}
    unavailable = kernels_unavailable(dev)
    doc["checks"] = {
        "kernels_unavailable": unavailable,
        "attention_error": None if unavailable else attention_error(model, 16, dev),
        "addmm_gelu_tanh": addmm_gelu_matches(dev),
    }
    doc["counts"] = _counts(model, cfg, device, dtype)
    if model_name != "md2":
        doc["counts_md2_extrapolated"] = _md2_extrapolation(cfg, device, dtype)
    doc["seconds"] = round(time.perf_counter() - t0, 2)
    return doc


def format_kernels(doc: dict[str, Any]) -> str:
    checks = doc["checks"]
    lines = [f"kernels on {doc['device']} ({doc['model']}, {doc['dtype']}): attention check: "
             f"{checks['kernels_unavailable'] or checks['attention_error'] or 'matches plain torch'}; "
             f"addmm GELU epilogue is tanh: {checks['addmm_gelu_tanh']}",
             f"{'decode kernels':<15} {'forward':>8} {'sampling':>9} {'total':>6} {'CUDA prof.':>10}  top ops"]

    def row(label: str, c: dict[str, Any]) -> str:
        if "error" in c:
            return f"{label:<15} error: {c['error']}"
        top = ", ".join(f"{k.split('::')[-1]} {v}" for k, v in list(c.get("top_ops", {}).items())[:4])
        cuda = c.get("cuda_kernels")
        return (f"{label:<15} {c['forward']:>8} {c['sampling']:>9} {c['total']:>6} "
                f"{'-' if cuda is None else cuda:>10}  {top}")

    lines += [row(kind, doc["counts"][kind]) for kind in KINDS]
    extra = doc.get("counts_md2_extrapolated")
    if extra:
        lines += [row(f"{kind} (md2 est.)", extra[kind]) for kind in KINDS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moonpipe.gpucheck.kernels", description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="md2", choices=["tiny", "small", "md2"])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    doc = run(args.device, args.model)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(format_kernels(doc))
    failed = doc["checks"]["attention_error"] or any("error" in c for c in doc["counts"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
