"""DeviceWork: everything that runs *on* the compute stream, as named methods.

The runner never hands a stream a closure over its own state; it asks the stream to call
one of these methods with plain arguments (a slot index, prefill items, sampling flags).
That keeps the device side of a step in one place and lets the compute stream be a
separate *process* on CPU (``runtime/device_process.py``): the worker holds a replica of
this object over the same shared-memory tensors and runs the same methods.

State (all allocated by the runner; shared memory when the worker is a process)::

    model, k/v (paged KV), slots (their buffers), mask_table
    next_token (S+1,) long | next_coord (S+1,) f32 | next_size (S+1, 2) f32 | feed_kind (S+1,) long

indexed by seq row (row S is the padding rows' scratch row); the test-only fault hook
travels with the object. State private to whoever executes the work (rebuilt by a worker
process, never shared): the sampling generator (seeded from ``cfg.seed``, so a process
worker samples the same stream as a thread), the image-embedding cache, CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from moonpipe.config import EngineConfig, ModelConfig
from moonpipe.kernels.decoders import TextDecoder
from moonpipe.kernels.select import build_decoder
from moonpipe.model.image import decode_image, normalize_crops, overlap_crops
from moonpipe.model.moondream import MoondreamModel
from moonpipe.runtime.graphs import DecodeGraphs
from moonpipe.runtime.image_lru import ImageLRU
from moonpipe.runtime.sampling import apply_masks, sample_tokens, spatial_values
from moonpipe.runtime.slots import StepShape, StepSlot
from moonpipe.step import Feed, PrefillItem, SamplingFlags

__all__ = ["DeviceWork", "FaultHook"]

# Test-only: ``hook(kind, seq_rows)`` runs inside every forward ("prefill" / "decode");
# raising fails that step (``moonpipe/testing.py``). With a process worker it must pickle.
FaultHook = Callable[[str, list[int]], None]

_PRIVATE = ("generator", "image_cache", "graphs", "decoder")


class DeviceWork:
    """The methods a compute stream runs (see module docstring)."""

    def __init__(self, *, model: MoondreamModel, model_cfg: ModelConfig, cfg: EngineConfig,
                 dtype: torch.dtype, k: torch.Tensor, v: torch.Tensor, slots: list[StepSlot],
                 next_token: torch.Tensor, next_coord: torch.Tensor, next_size: torch.Tensor,
                 feed_kind: torch.Tensor, mask_table: torch.Tensor, fault_hook: FaultHook | None = None) -> None:
        self.model = model
        self.model_cfg = model_cfg
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = dtype
        self.k, self.v = k, v
        self.slots = slots
        self.next_token, self.next_coord, self.next_size = next_token, next_coord, next_size
        self.feed_kind = feed_kind
        self.mask_table = mask_table
        self.bos_id = model_cfg.tokenizer.bos_id
        self.fault_hook = fault_hook
        self._replica = False
        self._init_private()

    def _init_private(self) -> None:
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.cfg.seed)
        self.image_cache: ImageLRU[torch.Tensor] = ImageLRU(self.cfg.image_cache_size)
        self.graphs: DecodeGraphs | None = None
        # the decode step's kernels (cfg.decode_kernels; moonpipe/kernels/select.py)
        self.decoder: TextDecoder = build_decoder(self.model, self.cfg.decode_kernels,
                                                  page_size=self.k.shape[2], device=self.device)

    # A worker process gets the shared state and rebuilds its private state.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _PRIVATE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._replica = True
        self._init_private()

    def _slot(self, index: int, shape: StepShape) -> StepSlot:
        slot = self.slots[index]
        if self._replica:  # a worker process's own copy of the slot object: take the sizes
            slot.adopt(shape)  # (in the staging process they are already set, and stay so)
        return slot

    # ----------------------------------------------------------------- copies
    def upload_inputs(self, slot: int, shape: StepShape) -> None:
        self._slot(slot, shape).upload_inputs()

    def upload_sampling(self, slot: int, shape: StepShape) -> None:
        self._slot(slot, shape).upload_sampling()

    def download_outputs(self, slot: int, shape: StepShape) -> None:
        self._slot(slot, shape).download_outputs()

    # --------------------------------------------------------------- forwards
    def replay(self, key: tuple[int, int, int]) -> None:
        assert self.graphs is not None
        self.graphs.replay(key)

    def decode(self, slot_index: int, shape: StepShape) -> None:
        """One decode forward + lm head for the slot's staged rows (bucket-padded)."""
        slot = self._slot(slot_index, shape)
        if self.fault_hook is not None and self.graphs is None:
            self.fault_hook("decode", slot.seq_rows[0][: slot.batch].tolist())
        b, p = slot.bucket, slot.num_pages
        model = self.model
        seq_rows = slot.seq_rows[1][:b]  # (B,)
        positions = slot.positions[1][:b]  # (B,)
        page_table = slot.page_table[1][:b, :p]  # (B, P)
        feed = self.feed_kind.index_select(0, seq_rows)[:, None]  # (B, 1)
        emb = model.embed_tokens(self.next_token.index_select(0, seq_rows))  # (B, D)
        coord = self.next_coord.index_select(0, seq_rows)[:, None].to(self.dtype)  # (B, 1)
        size = self.next_size.index_select(0, seq_rows).to(self.dtype)  # (B, 2)
        emb = torch.where(feed == int(Feed.COORD), model.encode_coordinate(coord), emb)
        emb = torch.where(feed == int(Feed.SIZE), model.encode_size(size), emb)
        hidden = self.decoder(emb, positions, self.k, self.v, page_table)  # (B, D)
        slot.hidden[:b].copy_(hidden)
        slot.logits[:b].copy_(model.lm_logits(hidden))

    def prefill(self, slot_index: int, shape: StepShape, items: list[PrefillItem]) -> None:
        """The prefix (BOS + image tokens; image encoder cached per image content) unless it
        is cached, then the prompt, of every item.

        The prefix and the prompt are always two forwards, so the KV and the outputs are the
        same whether the prefix came from the prefix cache or was computed here.
        """
        slot = self._slot(slot_index, shape)
        if self.fault_hook is not None:
            self.fault_hook("prefill", [it.seq_row for it in items])
        model = self.model
        prefix_len = self.model_cfg.prefix_len
        for row, it in enumerate(items):
            pages = self._to_device(torch.tensor(it.page_ids, dtype=torch.long))
            if it.cached_prefix:
                if it.boundary_src:  # our private copy of the page where the prefix ends
                    self.k[:, it.boundary_dst].copy_(self.k[:, it.boundary_src])  # (L, S, H, hd)
                    self.v[:, it.boundary_dst].copy_(self.v[:, it.boundary_src])
            else:
                img = self._image_embedding(it)  # (729, D)
                bos = model.embed_tokens(self._to_device(torch.tensor([self.bos_id])))  # (1, D)
                prefix = torch.cat([bos, img.to(bos.dtype)], dim=0)  # (730, D)
                hidden = model.prefill(prefix, 0, self.k, self.v, pages)  # (730, D)
            if it.prompt_ids:
                tok = model.embed_tokens(self._to_device(torch.tensor(it.prompt_ids)))  # (T, D)
                hidden = model.prefill(tok, prefix_len, self.k, self.v, pages)  # (T, D)
            elif it.cached_prefix:
                raise ValueError("a request without prompt tokens cannot start from a cached prefix")
            slot.hidden[row].copy_(hidden[-1])
        b = len(items)
        slot.logits[:b].copy_(model.lm_logits(slot.hidden[:b]))

    def _image_embedding(self, it: PrefillItem) -> torch.Tensor:
        cached = self.image_cache.get(it.image_key)
        if cached is not None:
            return cached
        crops, tiling = it.crops, it.tiling
        if crops is None:  # cached at submit, evicted since: decode here (the bytes were valid)
            image = decode_image(it.image, max_pixels=self.cfg.max_image_pixels)
            crops, tiling = overlap_crops(image, self.model_cfg.vision.max_crops)
        pixels = normalize_crops(self._to_device(torch.from_numpy(crops)), self.dtype, self.device)
        emb = self.model.encode_image(pixels, tiling)  # (729, D)
        self.image_cache.put(it.image_key, emb)
        return emb

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """Host tensor -> device without a synchronising pageable copy (pinned staging)."""
        if self.device.type == "cpu":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    # --------------------------------------------------------------- sampling
    def sample(self, slot_index: int, shape: StepShape, flags: SamplingFlags) -> None:
        """Masks, token choice, spatial values; writes the slot's outputs and the
        per-sequence next-input buffers the sequence's next forward reads."""
        slot = self._slot(slot_index, shape)
        b = slot.batch
        logits = slot.logits[:b]  # (B, V) f32, masked in place
        apply_masks(logits, self.mask_table, slot.mask_ids[1][:b], slot.banned[1][:b],
                    slot.banned_valid[1][:b], flags.any_mask, flags.any_banned)
        token = sample_tokens(logits, slot.temperature[1][:b], slot.top_p[1][:b],
                              slot.greedy[1][:b], self.generator, flags.any_sampled)
        hidden = slot.hidden[:b]
        coord_logits = self.model.decode_coordinate(hidden) if flags.any_coord else None
        size_logits = self.model.decode_size(hidden) if flags.any_size else None
        coord, size = spatial_values(coord_logits, size_logits, b, self.device)
        slot.out_token[1][:b].copy_(token)
        slot.out_coord[1][:b].copy_(coord)
        slot.out_size[1][:b].copy_(size)
        seq_rows = slot.seq_rows[1][:b]
        self.next_token.index_copy_(0, seq_rows, token)
        self.next_coord.index_copy_(0, seq_rows, coord)
        self.next_size.index_copy_(0, seq_rows, size)
        self.feed_kind.index_copy_(0, seq_rows, slot.feed[1][:b])
