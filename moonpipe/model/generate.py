"""Plain single-request greedy generation over the paged KV cache (reference oracle).

Unpipelined and unbatched on purpose: it follows md.py's loops step by step (spec 7.1, 7.2)
so the engine's tests and ``moonpipe golden-check`` can compare against it. Usage::

    seq = Sequence.allocate(model, max_len=1024, page_size=16)
    seq.prefill(image_prefix_embeds(model, image_emb))          # BOS + 729 image tokens
    result = generate_text(model, seq, prompt_ids, max_tokens=64)
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moonpipe.model.moondream import MoondreamModel
from moonpipe.model.region import coord_from_logits, size_from_logits, spatial_ref_values

__all__ = [
    "PointsResult",
    "Sequence",
    "TextResult",
    "embed_prompt",
    "generate_points",
    "generate_text",
    "image_prefix_embeds",
]


class Sequence:
    """One sequence's KV cache and position; pages are deliberately non-contiguous.

    Page 0 is left unused (the engine's scratch page); the sequence owns pages n..1 in
    reverse order, so any error in page addressing shows up in the results.
    """

    def __init__(self, model: MoondreamModel, k_cache: Tensor, v_cache: Tensor, page_ids: Tensor) -> None:
        self.model = model
        self.k_cache = k_cache
        self.v_cache = v_cache
        self.page_ids = page_ids  # (n_pages,) long
        self.pos = 0

    @classmethod
    def allocate(cls, model: MoondreamModel, max_len: int, *, page_size: int = 16) -> Sequence:
        cfg = model.config.text
        param = model.text.wte
        n_pages = -(-max_len // page_size)
        shape = (cfg.n_layers, n_pages + 1, page_size, cfg.n_heads, cfg.head_dim)
        k = torch.zeros(shape, dtype=param.dtype, device=param.device)
        v = torch.zeros(shape, dtype=param.dtype, device=param.device)
        page_ids = torch.arange(n_pages, 0, -1, device=param.device)
        return cls(model, k, v, page_ids)

    def fork(self) -> Sequence:
        """An independent copy (cache cloned), e.g. to reuse one encoded image prefix."""
        other = Sequence(self.model, self.k_cache.clone(), self.v_cache.clone(), self.page_ids)
        other.pos = self.pos
        return other

    def prefill(self, embeds: Tensor, prefix_len: int | None = None) -> Tensor:
        """(T, D) at the next T positions -> hidden (T, D)."""
        hidden = self.model.prefill(embeds, self.pos, self.k_cache, self.v_cache, self.page_ids, prefix_len)
        self.pos += embeds.shape[0]
        return hidden

    def step(self, embed: Tensor) -> Tensor:
        """(D,) at the next position -> hidden (D,)."""
        positions = torch.tensor([self.pos], device=embed.device)
        hidden = self.model.decode(embed[None], positions, self.k_cache, self.v_cache, self.page_ids[None])
        self.pos += 1
        return hidden[0]


def image_prefix_embeds(model: MoondreamModel, image_emb: Tensor) -> Tensor:
    """(729, D) image embeddings -> (730, D) ``[wte[bos], image...]``."""
    bos = model.config.tokenizer.bos_id
    bos_emb = model.embed_tokens(torch.tensor([bos], device=image_emb.device))
    return torch.cat([bos_emb, image_emb.to(bos_emb.dtype)], dim=0)


def embed_prompt(
    model: MoondreamModel, ids: Seq[int], spatial_refs: Seq[Seq[float]] = ()
) -> Tensor:
    """Prompt ids -> (T, D); ``coord_id``/``size_id`` placeholders take the spatial refs' values."""
    tok = model.config.tokenizer
    device = model.text.wte.device
    embeds = model.embed_tokens(torch.tensor(list(ids), device=device))
    coords, sizes = spatial_ref_values(spatial_refs)
    coord_pos = [i for i, t in enumerate(ids) if t == tok.coord_id]
    size_pos = [i for i, t in enumerate(ids) if t == tok.size_id]
    if len(coord_pos) != len(coords) or len(size_pos) != len(sizes):
        raise ValueError(
            f"prompt has {len(coord_pos)} coord / {len(size_pos)} size placeholders for "
            f"{len(coords)} coordinates / {len(sizes)} sizes"
        )
    embeds = embeds.clone()
    if coords:
        c = torch.tensor(coords, dtype=torch.float32, device=device).view(-1, 1)
        embeds[coord_pos] = model.encode_coordinate(c).to(embeds.dtype)
    if sizes:
        s = torch.tensor(sizes, dtype=torch.float32, device=device)
        embeds[size_pos] = model.encode_size(s).to(embeds.dtype)
    return embeds


@dataclass(slots=True)
class TextResult:
    """Greedy text answer plus the trace golden-check compares."""

    ids: list[int]  # emitted tokens (eos not included)
    stop_reason: str  # "eos" | "max_tokens"
    prefill_hidden: Tensor  # (T, D) prompt positions
    prefill_logits: Tensor  # (Vocab,) last prompt position
    decode_hidden: Tensor  # (n_steps, D), step i consumes ids[i]
    step_logits: list[Tensor] = field(default_factory=list)  # raw (unmasked), if recorded


def generate_text(
    model: MoondreamModel,
    seq: Sequence,
    prompt_embeds: Tensor,
    *,
    max_tokens: int,
    prefix_len: int | None = None,
    record_logits: bool = False,
) -> TextResult:
    """Greedy md.py ``_generate_answer``: first token unmasked, then ``answer_id`` banned.

    Like the reference, every emitted token is fed back (so ``decode_hidden`` has one row per
    emitted token, the last step's output unused when max_tokens is hit).
    """
    tok = model.config.tokenizer
    prefill_hidden = seq.prefill(prompt_embeds, prefix_len)
    prefill_logits = model.lm_logits(prefill_hidden[-1])
    token = int(torch.argmax(prefill_logits))
    ids: list[int] = []
    hidden_rows: list[Tensor] = []
    step_logits: list[Tensor] = []
    while token != tok.eos_id and len(ids) < max_tokens:
        ids.append(token)
        hidden = seq.step(model.embed_tokens(torch.tensor(token, device=prompt_embeds.device)))
        hidden_rows.append(hidden)
        logits = model.lm_logits(hidden)
        if record_logits:
            step_logits.append(logits)
        masked = logits.clone()
        masked[tok.answer_id] = float("-inf")
        token = int(torch.argmax(masked))
    stop = "eos" if token == tok.eos_id else "max_tokens"
    dim = prompt_embeds.shape[-1]
    decode_hidden = torch.stack(hidden_rows) if hidden_rows else prompt_embeds.new_zeros(0, dim)
    return TextResult(ids, stop, prefill_hidden, prefill_logits, decode_hidden, step_logits)


@dataclass(slots=True)
class PointsResult:
    """Points ``{"x", "y"}`` or boxes ``{"x_min", ...}`` plus the trace golden-check compares."""

    objects: list[dict[str, float]]
    stop_reason: str  # "eos" | "max_objects"
    decisions: list[int]  # greedy token after prefill and after each object
    prefill_hidden_last: Tensor  # (D,)
    prefill_logits: Tensor  # (Vocab,)
    decode_hidden: list[Tensor]  # (D,) after every step
    coord_logits: list[Tensor]  # (1024,) x0, y0, x1, ...
    coord_emb: list[Tensor]  # (D,)
    size_logits: list[Tensor]  # (2, 1024)
    size_emb: list[Tensor]  # (D,)


def generate_points(
    model: MoondreamModel,
    seq: Sequence,
    prompt_embeds: Tensor,
    *,
    include_size: bool,
    max_objects: int,
) -> PointsResult:
    """md.py ``_generate_points`` (point: include_size=False; detect: True), always greedy."""
    eos = model.config.tokenizer.eos_id
    prefill_hidden = seq.prefill(prompt_embeds)
    hidden = prefill_hidden[-1]
    logits = model.lm_logits(hidden)
    out = PointsResult([], "eos", [], hidden, logits, [], [], [], [], [])
    token = int(torch.argmax(logits))
    out.decisions.append(token)
    while token != eos and len(out.objects) < max_objects:
        x_logits = model.decode_coordinate(hidden)
        x = coord_from_logits(x_logits)  # () float32
        x_emb = model.encode_coordinate(x.view(1))
        hidden = seq.step(x_emb)
        y_logits = model.decode_coordinate(hidden)
        y = coord_from_logits(y_logits)
        emb = model.encode_coordinate(y.view(1))
        out.decode_hidden.append(hidden)
        out.coord_logits += [x_logits, y_logits]
        out.coord_emb += [x_emb, emb]
        if include_size:
            hidden = seq.step(emb)
            out.decode_hidden.append(hidden)
            s_logits = model.decode_size(hidden)
            size = size_from_logits(s_logits)  # (2,) float32
            emb = model.encode_size(size)
            out.size_logits.append(s_logits)
            out.size_emb.append(emb)
            xf, yf, w, h = float(x), float(y), float(size[0]), float(size[1])
            out.objects.append({"x_min": xf - w / 2, "y_min": yf - h / 2, "x_max": xf + w / 2, "y_max": yf + h / 2})
        else:
            out.objects.append({"x": float(x), "y": float(y)})
        hidden = seq.step(emb)
        out.decode_hidden.append(hidden)
        token = int(torch.argmax(model.lm_logits(hidden)))
        out.decisions.append(token)
    out.stop_reason = "eos" if token == eos else "max_objects"
    return out
