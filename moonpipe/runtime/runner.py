"""ModelRunner: the device side of the engine.

Owns the model, the paged KV cache, the two decode slots, the per-sequence "next input"
buffers, the vocabulary-mask table, the streams and the image-embedding cache. The
scheduler stages host data into a slot and calls ``launch_*``; every ``launch_*`` only
*enqueues* work (CUDA kernels, or closures for the CPU compute worker) and returns.

Per-sequence device state, indexed by the sequence's *seq slot* (row ``max_seqs`` is a
scratch row for padded batch rows)::

    next_token (S+1,) long      token sampled at the sequence's last step
    next_coord (S+1,) f32       coordinate value sampled at its last step
    next_size  (S+1, 2) f32     size (w, h) sampled at its last step
    feed_kind  (S+1,) long      which of the three the next forward embeds (Feed)

Sampling writes them (scatter by seq slot); the next forward reads them (gather by seq
slot). The compute stream is in order, so a forward always sees the values its
sequence's previous step sampled, with no host round trip and whatever the batch
composition of the two steps.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from moonpipe.config import EngineConfig, ModelConfig
from moonpipe.model.image import decode_image, normalize_crops, overlap_crops
from moonpipe.model.moondream import MoondreamModel
from moonpipe.runtime.graphs import DecodeGraphs, batch_buckets, bucket_for, page_buckets
from moonpipe.runtime.kv_cache import KVCache, pages_needed
from moonpipe.runtime.sampling import apply_masks, sample_tokens, spatial_values
from moonpipe.runtime.slots import DecodeSlot
from moonpipe.runtime.streams import CudaStream, StreamSet, make_streams
from moonpipe.skills.base import Feed, VocabMask

__all__ = ["ModelRunner", "PrefillItem", "SamplingFlags"]

log = logging.getLogger("moonpipe.runner")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NUM_IMAGE_TOKENS = 729


def image_key(data: bytes) -> str:
    """Content hash used to encode a repeated image once."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class PrefillItem:
    """One sequence of a prefill step."""

    seq_slot: int
    image_key: str
    crops: np.ndarray | None  # (n, 378, 378, 3) uint8; None: the embedding was cached at submit
    tiling: tuple[int, int]
    image: bytes  # the encoded file, decoded here only if a cached embedding was evicted
    prompt_ids: tuple[int, ...]
    page_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SamplingFlags:
    """Batch-wide facts the host knows before sampling (they pick code paths)."""

    any_mask: bool
    any_banned: bool
    any_sampled: bool
    any_coord: bool
    any_size: bool


class ModelRunner:
    """Device-side state and the enqueueing of forwards, sampling and copies."""

    def __init__(self, model: MoondreamModel, model_cfg: ModelConfig, cfg: EngineConfig,
                 masks: Sequence[VocabMask]) -> None:
        self.model = model
        self.model_cfg = model_cfg
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = _DTYPES[cfg.dtype]
        text = model_cfg.text
        self.max_seqs = cfg.max_batch_size
        self.page_size = cfg.kv_page_size
        max_pages = pages_needed(text.max_context, cfg.kv_page_size)
        num_pages = cfg.num_kv_pages or (self.max_seqs * max_pages + 1)
        self.kv = KVCache(text, num_pages, cfg.kv_page_size, self.dtype, self.device)
        self.streams: StreamSet = make_streams(self.device, cfg.compute_threads)
        self.slots = [
            DecodeSlot(i, self.max_seqs, max_pages, text.dim, text.vocab_size, self.device, self.dtype)
            for i in range(2)
        ]
        s = self.max_seqs + 1  # + scratch row for padding
        self.scratch_seq_slot = self.max_seqs
        self.next_token = torch.zeros(s, dtype=torch.long, device=self.device)
        self.next_coord = torch.zeros(s, dtype=torch.float32, device=self.device)
        self.next_size = torch.zeros((s, 2), dtype=torch.float32, device=self.device)
        self.feed_kind = torch.zeros(s, dtype=torch.long, device=self.device)
        vocab = text.vocab_size
        table = torch.ones((1 + len(masks), vocab), dtype=torch.bool)
        for i, m in enumerate(masks, start=1):
            table[i] = False
            ids = torch.tensor([t for t in m.allowed_ids if 0 <= t < vocab], dtype=torch.long)
            table[i, ids] = True
        self.mask_table = table.to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)
        self._image_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.bos_id = model_cfg.tokenizer.bos_id
        # Test-only fault injection: called inside every forward with the step kind.
        self.fault_hook: Callable[[str, list[int]], None] | None = None
        self.batch_buckets = batch_buckets(self.max_seqs)
        self.page_buckets = page_buckets(max_pages)
        self.graphs: DecodeGraphs | None = None
        # Pad decode steps to (batch, page) buckets: required by CUDA graphs; settable on
        # CPU so the padding path is tested without a GPU.
        self.pad_buckets = False
        if self.device.type == "cuda" and cfg.cuda_graphs:
            self.pad_buckets = True
            self._capture_graphs()

    def _capture_graphs(self) -> None:
        """Capture every (slot, batch bucket, page bucket) decode graph up front, with the
        slot staged as padding rows only (scratch seq slot, position 0, page 0)."""
        compute = self.streams.compute
        assert isinstance(compute, CudaStream)
        graphs = DecodeGraphs(compute.stream)
        zeros = np.zeros((self.max_seqs, self.kv.max_pages_per_seq), dtype=np.int64)
        with torch.inference_mode():
            for slot in self.slots:
                for bb in reversed(self.batch_buckets):  # largest first: the pool fits the rest
                    for pb in reversed(self.page_buckets):
                        slot.batch = 0
                        self._stage_rows(slot, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64),
                                         zeros[:0], bb, pb)
                        slot.upload_inputs()
                        torch.cuda.synchronize(self.device)
                        graphs.capture((slot.index, bb, pb), functools.partial(self._decode_forward, slot))
        torch.cuda.synchronize(self.device)
        self.graphs = graphs
        log.info("captured %d decode CUDA graphs", len(graphs))

    # ------------------------------------------------------------------ staging
    def stage_decode(self, slot: DecodeSlot, seq_slots: np.ndarray, positions: np.ndarray,
                     page_rows: np.ndarray) -> None:
        """Write one decode step's inputs into the slot's host buffers (vectorised).

        ``page_rows``: (B, max_pages) page ids of each row's sequence.
        """
        b = len(seq_slots)
        num_pages = int(positions.max()) // self.page_size + 1
        if self.pad_buckets:  # static shapes: pad to the buckets a graph was captured for
            bucket, num_pages = bucket_for(b, self.batch_buckets), bucket_for(num_pages, self.page_buckets)
        else:
            bucket = b
        slot.batch = b
        self._stage_rows(slot, seq_slots, positions, page_rows, bucket, num_pages)

    def _stage_rows(self, slot: DecodeSlot, seq_slots: np.ndarray, positions: np.ndarray,
                    page_rows: np.ndarray, bucket: int, num_pages: int) -> None:
        """Rows ``[0, len(seq_slots))`` are real; ``[len, bucket)`` are padding rows."""
        b = len(seq_slots)
        slot.bucket = bucket
        slot.num_pages = num_pages
        ss, pos = DecodeSlot.host_np(slot.seq_slots), DecodeSlot.host_np(slot.positions)
        table = DecodeSlot.host_np(slot.page_table)
        ss[:b] = seq_slots
        ss[b:bucket] = self.scratch_seq_slot
        pos[:b] = positions
        pos[b:bucket] = 0
        table[:b, :num_pages] = page_rows[:, :num_pages]  # zeros (scratch page) past a row's pages
        table[b:bucket, :num_pages] = 0

    def stage_prefill(self, slot: DecodeSlot, items: Sequence[PrefillItem]) -> None:
        b = len(items)
        slot.batch = b
        slot.bucket = b
        slot.num_pages = 0
        DecodeSlot.host_np(slot.seq_slots)[:b] = [it.seq_slot for it in items]

    def stage_sampling(self, slot: DecodeSlot, temperature: np.ndarray, top_p: np.ndarray,
                       greedy: np.ndarray, mask_ids: np.ndarray, banned: np.ndarray,
                       banned_valid: np.ndarray, feed: np.ndarray) -> None:
        b = slot.batch
        DecodeSlot.host_np(slot.temperature)[:b] = temperature
        DecodeSlot.host_np(slot.top_p)[:b] = top_p
        DecodeSlot.host_np(slot.greedy)[:b] = greedy
        DecodeSlot.host_np(slot.mask_ids)[:b] = mask_ids
        DecodeSlot.host_np(slot.banned)[:b] = banned
        DecodeSlot.host_np(slot.banned_valid)[:b] = banned_valid
        DecodeSlot.host_np(slot.feed)[:b] = feed

    # ------------------------------------------------------------------ launches
    def _guarded(self, slot: DecodeSlot, fn: Callable[[], None]) -> None:
        """Run a launch step; an exception (CUDA: raised here, on the scheduler thread)
        is kept on the slot and raised by ``read_outputs``, so it fails this step's
        requests only, as a failed closure does on the CPU workers."""
        if slot.error is not None:
            return
        try:
            fn()
        except Exception as exc:
            slot.error = exc

    def launch_decode(self, slot: DecodeSlot) -> None:
        """Enqueue the upload of staged inputs and one decode forward (+ lm head)."""
        slot.error = None
        self._guarded(slot, lambda: self._launch_decode(slot))

    def _launch_decode(self, slot: DecodeSlot) -> None:
        st = self.streams
        st.upload.run(slot.upload_inputs)
        st.compute.wait(st.upload.record())
        slot.events.forward_start = st.compute.record()
        graphs = self.graphs
        if graphs is not None:
            key = (slot.index, slot.bucket, slot.num_pages)
            if self.fault_hook is not None:
                self.fault_hook("decode", DecodeSlot.host_np(slot.seq_slots)[: slot.batch].tolist())
            st.compute.run(lambda: graphs.replay(key))
        else:
            st.compute.run(lambda: self._decode_forward(slot))
        slot.events.forward_end = st.compute.record()

    def launch_prefill(self, slot: DecodeSlot, items: Sequence[PrefillItem]) -> None:
        slot.error = None
        self._guarded(slot, lambda: self._launch_prefill(slot, items))

    def _launch_prefill(self, slot: DecodeSlot, items: Sequence[PrefillItem]) -> None:
        st = self.streams
        st.upload.run(slot.upload_inputs)
        st.compute.wait(st.upload.record())
        slot.events.forward_start = st.compute.record()
        items = list(items)
        st.compute.run(lambda: self._prefill_forward(slot, items))
        slot.events.forward_end = st.compute.record()

    def launch_sampling(self, slot: DecodeSlot, flags: SamplingFlags) -> None:
        """Enqueue the upload of sampling parameters, sampling, and the D2H copy."""
        self._guarded(slot, lambda: self._launch_sampling(slot, flags))

    def _launch_sampling(self, slot: DecodeSlot, flags: SamplingFlags) -> None:
        st = self.streams
        st.upload.run(slot.upload_sampling)
        st.compute.wait(st.upload.record())
        slot.events.sample_start = st.compute.record()
        st.compute.run(lambda: self._sample(slot, flags))
        done = st.compute.record()
        slot.events.sample_end = done
        st.copy.wait(done)
        st.copy.run(slot.download_outputs)
        slot.events.copy_done = st.copy.record()

    def read_outputs(self, slot: DecodeSlot) -> tuple[list[int], list[float], list[list[float]]]:
        """Wait for the slot's outputs on the host and return them as Python lists.

        Raises the exception of a failed forward/sampling of this step (CPU worker), so
        the scheduler can fail exactly the requests of this step.
        """
        if slot.error is not None:
            error, slot.error = slot.error, None
            self.synchronize()  # nothing of this step may still run when the slot is reused
            raise error
        for ev in slot.events.all():
            ev.synchronize()
        b = slot.batch
        return (
            slot.out_token[0][:b].tolist(),
            slot.out_coord[0][:b].tolist(),
            slot.out_size[0][:b].tolist(),
        )

    def step_times_ms(self, slot: DecodeSlot) -> tuple[float, float]:
        """(forward, sampling) device times of the slot's last step; events must be done."""
        ev = slot.events
        fwd = samp = 0.0
        if ev.forward_start is not None and ev.forward_end is not None:
            fwd = ev.forward_start.elapsed_ms(ev.forward_end)
        if ev.sample_start is not None and ev.sample_end is not None:
            samp = ev.sample_start.elapsed_ms(ev.sample_end)
        return fwd, samp

    # ------------------------------------------------------------- device work
    def _decode_forward(self, slot: DecodeSlot) -> None:
        if self.fault_hook is not None and self.graphs is None:
            self.fault_hook("decode", slot.seq_slots[0][: slot.batch].tolist())
        b, p = slot.bucket, slot.num_pages
        model = self.model
        seq_slots = slot.seq_slots[1][:b]  # (B,)
        positions = slot.positions[1][:b]  # (B,)
        page_table = slot.page_table[1][:b, :p]  # (B, P)
        feed = self.feed_kind.index_select(0, seq_slots)[:, None]  # (B, 1)
        emb = model.embed_tokens(self.next_token.index_select(0, seq_slots))  # (B, D)
        coord = self.next_coord.index_select(0, seq_slots)[:, None].to(self.dtype)  # (B, 1)
        size = self.next_size.index_select(0, seq_slots).to(self.dtype)  # (B, 2)
        emb = torch.where(feed == int(Feed.COORD), model.encode_coordinate(coord), emb)
        emb = torch.where(feed == int(Feed.SIZE), model.encode_size(size), emb)
        hidden = model.decode(emb, positions, self.kv.k, self.kv.v, page_table)  # (B, D)
        slot.hidden[:b].copy_(hidden)
        slot.logits[:b].copy_(model.lm_logits(hidden))

    def _prefill_forward(self, slot: DecodeSlot, items: list[PrefillItem]) -> None:
        if self.fault_hook is not None:
            self.fault_hook("prefill", [it.seq_slot for it in items])
        model = self.model
        for row, it in enumerate(items):
            img = self._image_embedding(it)  # (729, D)
            tok = model.embed_tokens(self._to_device(torch.tensor((self.bos_id, *it.prompt_ids))))  # (1 + T, D)
            emb = torch.cat([tok[:1], img.to(tok.dtype), tok[1:]], dim=0)  # (730 + T, D)
            pages = self._to_device(torch.tensor(it.page_ids, dtype=torch.long))
            hidden = model.prefill(emb, 0, self.kv.k, self.kv.v, pages)  # (730 + T, D)
            slot.hidden[row].copy_(hidden[-1])
        b = len(items)
        slot.logits[:b].copy_(model.lm_logits(slot.hidden[:b]))

    def has_image(self, key: str) -> bool:
        """Whether an embedding for this image content is cached (a racy hint for submit:
        a miss at prefill time falls back to decoding there)."""
        return key in self._image_cache

    def _image_embedding(self, it: PrefillItem) -> torch.Tensor:
        cached = self._image_cache.get(it.image_key)
        if cached is not None:
            self._image_cache.move_to_end(it.image_key)
            return cached
        crops, tiling = it.crops, it.tiling
        if crops is None:  # cached at submit, evicted since: decode here (the bytes were valid)
            image = decode_image(it.image, max_pixels=self.cfg.max_image_pixels)
            crops, tiling = overlap_crops(image, self.model_cfg.vision.max_crops)
        pixels = normalize_crops(self._to_device(torch.from_numpy(crops)), self.dtype, self.device)
        emb = self.model.encode_image(pixels, tiling)  # (729, D)
        self._image_cache[it.image_key] = emb
        while len(self._image_cache) > self.cfg.image_cache_size:
            self._image_cache.popitem(last=False)
        return emb

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """Host tensor -> device without a synchronising pageable copy (pinned staging)."""
        if self.device.type == "cpu":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _sample(self, slot: DecodeSlot, flags: SamplingFlags) -> None:
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
        seq_slots = slot.seq_slots[1][:b]
        self.next_token.index_copy_(0, seq_slots, token)
        self.next_coord.index_copy_(0, seq_slots, coord)
        self.next_size.index_copy_(0, seq_slots, size)
        self.feed_kind.index_copy_(0, seq_slots, slot.feed[1][:b])

    # ------------------------------------------------------------------ admin
    def synchronize(self) -> None:
        self.streams.compute.synchronize()
        self.streams.copy.synchronize()

    def close(self) -> None:
        self.streams.close()
