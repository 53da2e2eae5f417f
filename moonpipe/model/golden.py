"""``moonpipe golden-check``: recompute every entry of a golden directory with moonpipe's code.

The golden directory (``tests/data/golden/md2-tiny``) holds the reference implementation's
outputs for a tiny random checkpoint: ``golden.json`` (ids, bins, points, boxes, tolerances),
``golden.safetensors`` (tensors), ``model.safetensors`` + ``config.json`` and ``image.png``.
Everything runs in float32 on CPU. The model is fed the golden ``crops_u8`` so model parity
is independent of the resizer, which is checked separately (crops must match exactly).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor

from moonpipe.errors import CheckpointError
from moonpipe.model.generate import Sequence as KVSequence
from moonpipe.model.generate import (
    embed_prompt,
    generate_points,
    generate_text,
    image_prefix_embeds,
)
from moonpipe.model.image import image_tiling, normalize_crops, overlap_crops
from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.region import coord_from_logits, size_from_logits
from moonpipe.model.weights import load_model

__all__ = ["CheckResult", "run_golden_check"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One compared entry. ``max_rel`` is ``max |a-b| / (|b| + atol)``."""

    name: str
    max_abs: float
    max_rel: float
    tol: str
    ok: bool

    def line(self) -> str:
        status = "OK" if self.ok else "FAIL"
        return f"{self.name:<32} max_abs={self.max_abs:.3e}  max_rel={self.max_rel:.3e}  tol={self.tol:<22} {status}"


def _close(name: str, got: Tensor, want: Tensor, atol: float, rtol: float) -> CheckResult:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        return CheckResult(f"{name} shape {list(got.shape)}!={list(want.shape)}", float("inf"), float("inf"), "shape", False)
    diff = (got - want).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    max_rel = float((diff / (want.abs() + atol)).max()) if diff.numel() else 0.0
    ok = bool(torch.all(diff <= atol + rtol * want.abs()))
    return CheckResult(name, max_abs, max_rel, f"atol={atol:g} rtol={rtol:g}", ok)


def _exact(name: str, got: Any, want: Any) -> CheckResult:
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(want, dtype=np.float64)
    if a.shape != b.shape:
        return CheckResult(f"{name} shape {list(a.shape)}!={list(b.shape)}", float("inf"), float("inf"), "exact", False)
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / (np.abs(b) + 1e-12)).max()) if diff.size else 0.0
    return CheckResult(name, max_abs, max_rel, "exact", max_abs == 0.0)


def _tol(golden: dict[str, Any], key: str) -> tuple[float, float]:
    t = golden["tolerances_recommended"][key]
    return float(t["atol"]), float(t["rtol"])


def _box_list(objs: Sequence[dict[str, float]], keys: Sequence[str]) -> list[list[float]]:
    return [[o[k] for k in keys] for o in objs]


def _check_image(model: MoondreamModel, g: dict[str, Any], t: dict[str, Tensor], root: Path) -> Iterator[CheckResult]:
    image = np.asarray(Image.open(root / "image.png").convert("RGB"))
    crops, tiling = overlap_crops(image, model.config.vision.max_crops)
    yield _exact("crops_u8", crops, t["crops_u8"].numpy())
    yield _exact("tiling", list(tiling), g["vision"]["tiling"])
    got, want = [], []
    for row in g["tiling_table"]["rows"]:
        for mc in (6, 12):
            got.append(list(image_tiling(row["height"], row["width"], mc)))
            want.append(row[f"tiling_max_crops_{mc}"])
    yield _exact("tiling_table", got, want)


def _check_vision(model: MoondreamModel, g: dict[str, Any], t: dict[str, Tensor]) -> Iterator[CheckResult]:
    tiling = (int(g["vision"]["tiling"][0]), int(g["vision"]["tiling"][1]))
    pixels = normalize_crops(t["crops_u8"].numpy(), torch.float32, "cpu")
    features = model.vision.encode(pixels)  # (n, 729, V)
    atol, rtol = _tol(g, "vision_enc_out_*")
    yield _close("vision_enc_out_crop0", features[0], t["vision_enc_out_crop0"], atol, rtol)
    yield _close("vision_enc_out_crop1", features[1], t["vision_enc_out_crop1"], atol, rtol)
    pooled = model.vision.pool_local(features[1:], tiling)
    yield _close("vision_local_pooled", pooled, t["vision_local_pooled"], *_tol(g, "vision_local_pooled"))
    image_emb = model.vision.project(features[0], pooled)
    yield _close("image_emb", image_emb, t["image_emb"], *_tol(g, "image_emb"))
    yield _close("encode_image", model.encode_image(pixels, tiling), t["image_emb"], *_tol(g, "image_emb"))


def _check_text(model: MoondreamModel, g: dict[str, Any], t: dict[str, Tensor], page_size: int) -> Iterator[CheckResult]:
    tiling = (int(g["vision"]["tiling"][0]), int(g["vision"]["tiling"][1]))
    pixels = normalize_crops(t["crops_u8"].numpy(), torch.float32, "cpu")
    prefix = image_prefix_embeds(model, model.encode_image(pixels, tiling))  # (730, D)
    max_len = model.config.prefix_len + 64
    base = KVSequence.allocate(model, max_len, page_size=page_size)
    prefix_hidden = base.prefill(prefix)
    yield _close("prefix_hidden_rows", prefix_hidden[::8], t["prefix_hidden_rows"], *_tol(g, "prefix_hidden_rows"))
    logit_tol = _tol(g, "*_prefill_logits / caption_step1_logits")
    hidden_tol = _tol(g, "*_hidden")
    region_tol = _tol(g, "region logits / embeddings")

    cap = g["text"]["caption"]
    prompt = embed_prompt(model, cap["prompt_ids"])
    res = generate_text(model, base.fork(), prompt, max_tokens=cap["settings"]["max_tokens"], record_logits=True)
    yield _close("caption_prefill_hidden", res.prefill_hidden, t["caption_prefill_hidden"], *hidden_tol)
    yield _close("caption_prefill_logits", res.prefill_logits, t["caption_prefill_logits"], *logit_tol)
    yield _close("caption_step1_logits", res.step_logits[0], t["caption_step1_logits"], *logit_tol)
    yield _close("caption_decode_hidden", res.decode_hidden, t["caption_decode_hidden"], *hidden_tol)
    yield _exact("caption_generated_ids", res.ids, cap["generated_ids"])
    yield _exact("caption_stop_reason", [res.stop_reason == cap["stop_reason"]], [True])
    # One-shot prefill (BOS + image + prompt from position 0) must equal the cached path.
    oneshot = KVSequence.allocate(model, max_len, page_size=page_size)
    hidden = oneshot.prefill(torch.cat([prefix, prompt]))
    yield _close("caption_oneshot_logits", model.lm_logits(hidden[-1]), t["caption_prefill_logits"], *logit_tol)

    for skill, include_size in (("point", False), ("detect", True)):
        gs = g[skill]
        prompt = embed_prompt(model, gs["prompt_ids"])
        pts = generate_points(model, base.fork(), prompt, include_size=include_size, max_objects=gs["settings"]["max_objects"])
        yield _close(f"{skill}_prefill_logits", pts.prefill_logits, t[f"{skill}_prefill_logits"], *logit_tol)
        yield _close(f"{skill}_prefill_hidden_last", pts.prefill_hidden_last, t[f"{skill}_prefill_hidden_last"], *hidden_tol)
        yield _close(f"{skill}_decode_hidden", torch.stack(pts.decode_hidden), t[f"{skill}_decode_hidden"], *hidden_tol)
        yield _close(f"{skill}_coord_logits", torch.stack(pts.coord_logits), t[f"{skill}_coord_logits"], *region_tol)
        yield _close(f"{skill}_coord_emb", torch.stack(pts.coord_emb), t[f"{skill}_coord_emb"], *region_tol)
        yield _exact(f"{skill}_decisions", pts.decisions, [d["argmax"] for d in gs["decisions"]])
        yield _exact(f"{skill}_coord_bins", [int(torch.argmax(c)) for c in pts.coord_logits], [c["argmax_bin"] for c in gs["coords"]])
        yield _exact(f"{skill}_stop_reason", [pts.stop_reason == gs["stop_reason"]], [True])
        if include_size:
            yield _close("detect_size_logits", torch.stack(pts.size_logits), t["detect_size_logits"], *region_tol)
            yield _close("detect_size_emb", torch.stack(pts.size_emb), t["detect_size_emb"], *region_tol)
            bins = [[int(b) for b in torch.argmax(s, dim=-1)] for s in pts.size_logits]
            yield _exact("detect_size_bins", bins, [[s["w_bin"], s["h_bin"]] for s in gs["sizes"]])
            values = [size_from_logits(s).tolist() for s in pts.size_logits]
            yield _exact("detect_sizes", values, [[s["w"], s["h"]] for s in gs["sizes"]])
            keys = ("x_min", "y_min", "x_max", "y_max")
            got = torch.tensor(_box_list(pts.objects, keys), dtype=torch.float64)
            want = torch.tensor(_box_list(gs["objects"], keys), dtype=torch.float64)
            yield _close("detect_boxes", got, want, 1e-6, 0.0)
        else:
            yield _exact("point_points", _box_list(pts.objects, ("x", "y")), _box_list(gs["points"], ("x", "y")))


def _check_region(model: MoondreamModel, g: dict[str, Any], t: dict[str, Tensor]) -> Iterator[CheckResult]:
    tol = _tol(g, "region_test_*")
    rs = g["region_standalone"]
    yield _exact("region_test_coords", t["region_test_coords"].view(-1).tolist(), rs["coords"])
    yield _close("region_test_coord_emb", model.encode_coordinate(t["region_test_coords"]), t["region_test_coord_emb"], *tol)
    yield _close("region_test_size_emb", model.encode_size(t["region_test_sizes"]), t["region_test_size_emb"], *tol)
    coord_logits = model.decode_coordinate(t["region_test_hidden"])
    size_logits = model.decode_size(t["region_test_hidden"])
    yield _close("region_test_coord_logits", coord_logits, t["region_test_coord_logits"], *tol)
    yield _close("region_test_size_logits", size_logits, t["region_test_size_logits"], *tol)
    yield _exact("region_decode_argmax", [int(torch.argmax(coord_logits)), *torch.argmax(size_logits, -1).tolist()],
                 [rs["decode_coordinate_argmax"], *rs["decode_size_argmax"]])
    # float32 helpers vs the float64 formula: equal up to float32 rounding.
    got = torch.tensor([float(coord_from_logits(coord_logits)), *size_from_logits(size_logits).tolist()])
    want = torch.tensor([rs["decode_coordinate_argmax"] / 1024, *[2.0 ** (b / 1023 * 10 - 10) for b in rs["decode_size_argmax"]]])
    yield _close("region_value_helpers", got, want, 0.0, 1e-6)
    tok = model.config.tokenizer
    refs = embed_prompt(model, [tok.coord_id] * 4 + [tok.size_id], rs["spatial_refs"])
    yield _close("spatial_refs_coord_emb", refs[:4], t["spatial_refs_coord_emb"], *tol)
    yield _close("spatial_refs_size_emb", refs[4:], t["spatial_refs_size_emb"], *tol)


def run_golden_check(root: str | Path, *, page_size: int = 16) -> list[CheckResult]:
    """Recompute every golden entry in ``root``; returns one result per entry."""
    root = Path(root)
    for name in ("golden.json", "golden.safetensors", "model.safetensors", "image.png"):
        if not (root / name).is_file():
            raise CheckpointError(f"{root / name}: golden file not found")
    g = json.loads((root / "golden.json").read_text())
    t = load_file(str(root / "golden.safetensors"))
    model = load_model(root, dtype=torch.float32, device="cpu")
    results: list[CheckResult] = []
    with torch.inference_mode():
        for part in (_check_image(model, g, t, root), _check_vision(model, g, t),
                     _check_region(model, g, t), _check_text(model, g, t, page_size)):
            results.extend(part)
    return results
