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
import pickle
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from moonpipe.config import EngineConfig, ModelConfig
from moonpipe.model.moondream import MoondreamModel
from moonpipe.runtime.device_work import DeviceWork, FaultHook, PrefillItem, SamplingFlags
from moonpipe.runtime.graphs import DecodeGraphs, batch_buckets, bucket_for, page_buckets
from moonpipe.runtime.kv_cache import KVCache, pages_needed
from moonpipe.runtime.slots import DecodeSlot
from moonpipe.runtime.streams import CudaStream, StreamSet, make_streams
from moonpipe.skills.base import VocabMask

__all__ = ["ModelRunner", "PrefillItem", "SamplingFlags"]

log = logging.getLogger("moonpipe.runner")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NUM_IMAGE_TOKENS = 729


def image_key(data: bytes) -> str:
    """Content hash used to encode a repeated image once."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


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
        self.slots = [
            DecodeSlot(i, self.max_seqs, max_pages, text.dim, text.vocab_size, self.device, self.dtype)
            for i in range(2)
        ]
        s = self.max_seqs + 1  # + scratch row for padding
        self.scratch_seq_slot = self.max_seqs
        vocab = text.vocab_size
        table = torch.ones((1 + len(masks), vocab), dtype=torch.bool)
        for i, m in enumerate(masks, start=1):
            table[i] = False
            ids = torch.tensor([t for t in m.allowed_ids if 0 <= t < vocab], dtype=torch.long)
            table[i, ids] = True
        self.work = DeviceWork(
            model=model, model_cfg=model_cfg, cfg=cfg, dtype=self.dtype, k=self.kv.k, v=self.kv.v,
            slots=self.slots,
            next_token=torch.zeros(s, dtype=torch.long, device=self.device),
            next_coord=torch.zeros(s, dtype=torch.float32, device=self.device),
            next_size=torch.zeros((s, 2), dtype=torch.float32, device=self.device),
            feed_kind=torch.zeros(s, dtype=torch.long, device=self.device),
            mask_table=table.to(self.device),
        )
        self.cpu_worker = cfg.cpu_worker if self.device.type == "cpu" else "none"
        self.streams: StreamSet = make_streams(self.device, self.work, cfg.compute_threads, self.cpu_worker)
        # Keys of the images the compute stream has encoded (or will have, by the time a
        # later prefill runs: the stream is in order), in the work's LRU order. A hint for
        # submit, whichever process holds the embeddings; a miss only costs a decode.
        self._image_keys: OrderedDict[str, None] = OrderedDict()
        self._fault_hook: FaultHook | None = None
        self.batch_buckets = batch_buckets(self.max_seqs)
        self.page_buckets = page_buckets(max_pages)
        # Pad decode steps to (batch, page) buckets: required by CUDA graphs; settable on
        # CPU so the padding path is tested without a GPU.
        self.pad_buckets = False
        if self.device.type == "cuda" and cfg.cuda_graphs:
            self.pad_buckets = True
            self._capture_graphs()

    @property
    def graphs(self) -> DecodeGraphs | None:
        """The captured decode graphs (CUDA), owned by the work that replays them."""
        return self.work.graphs

    @property
    def fault_hook(self) -> FaultHook | None:
        """Test-only: ``hook(kind, seq_slots)`` runs inside every forward (on the compute
        worker; with a process worker the hook must be picklable)."""
        return self._fault_hook

    @fault_hook.setter
    def fault_hook(self, hook: FaultHook | None) -> None:
        if self.cpu_worker == "process":
            try:
                pickle.dumps(hook)
            except Exception as exc:
                raise TypeError(f"a fault hook for a process compute worker must pickle: {exc}") from exc
        self._fault_hook = hook  # replayed CUDA graphs run no Python: decode calls it at launch
        compute = self.streams.compute
        compute.call("set_fault_hook", hook)
        compute.flush()

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
                        graphs.capture((slot.index, bb, pb), functools.partial(self.work.decode, slot.index, slot.shape()))
        torch.cuda.synchronize(self.device)
        self.work.graphs = graphs
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
        requests only, as a failed call does on the CPU workers."""
        if slot.error is not None:
            return
        try:
            fn()
        except Exception as exc:
            slot.error = exc

    def flush(self) -> None:
        """Hand the work enqueued since the last flush to the workers: the scheduler calls
        it once per tick phase (one message to a process worker instead of one per call);
        ``read_outputs`` and ``synchronize`` flush before they wait."""
        self.streams.flush()

    def launch_decode(self, slot: DecodeSlot) -> None:
        """Enqueue the upload of staged inputs and one decode forward (+ lm head)."""
        slot.error = None
        self._guarded(slot, lambda: self._launch_decode(slot))

    def _upload(self, method: str, slot: DecodeSlot) -> None:
        st = self.streams
        st.upload.call(method, slot.index, slot.shape())
        if st.upload is not st.compute:
            st.compute.wait(st.upload.record())

    def _launch_decode(self, slot: DecodeSlot) -> None:
        st = self.streams
        self._upload("upload_inputs", slot)
        slot.events.forward_start = st.compute.record()
        if self.graphs is not None:
            if self._fault_hook is not None:
                self._fault_hook("decode", DecodeSlot.host_np(slot.seq_slots)[: slot.batch].tolist())
            st.compute.call("replay", (slot.index, slot.bucket, slot.num_pages))
        else:
            st.compute.call("decode", slot.index, slot.shape())
        slot.events.forward_end = st.compute.record()

    def launch_prefill(self, slot: DecodeSlot, items: Sequence[PrefillItem]) -> None:
        slot.error = None
        self._guarded(slot, lambda: self._launch_prefill(slot, items))

    def _launch_prefill(self, slot: DecodeSlot, items: Sequence[PrefillItem]) -> None:
        st = self.streams
        self._upload("upload_inputs", slot)
        slot.events.forward_start = st.compute.record()
        st.compute.call("prefill", slot.index, slot.shape(), list(items))
        slot.events.forward_end = st.compute.record()
        for it in items:  # mirror the work's image LRU (see __init__)
            self._image_keys[it.image_key] = None
            self._image_keys.move_to_end(it.image_key)
        while len(self._image_keys) > self.cfg.image_cache_size:
            self._image_keys.popitem(last=False)

    def launch_sampling(self, slot: DecodeSlot, flags: SamplingFlags) -> None:
        """Enqueue the upload of sampling parameters, sampling, and the D2H copy."""
        self._guarded(slot, lambda: self._launch_sampling(slot, flags))

    def _launch_sampling(self, slot: DecodeSlot, flags: SamplingFlags) -> None:
        st = self.streams
        self._upload("upload_sampling", slot)
        slot.events.sample_start = st.compute.record()
        st.compute.call("sample", slot.index, slot.shape(), flags)
        done = st.compute.record()
        slot.events.sample_end = done
        st.copy.wait(done)
        st.copy.call("download_outputs", slot.index, slot.shape())
        slot.events.copy_done = st.copy.record()

    def read_outputs(self, slot: DecodeSlot) -> tuple[list[int], list[float], list[list[float]]]:
        """Wait for the slot's outputs on the host and return them as Python lists.

        Raises the exception of a failed forward/sampling of this step (CPU worker), so
        the scheduler can fail exactly the requests of this step.
        """
        self.flush()
        if slot.error is not None:
            error, slot.error = slot.error, None
            self.synchronize()  # nothing of this step may still run when the slot is reused
            raise error
        events = slot.events.all()
        for ev in events:  # every call of the step has run (or was skipped) before the slot
            ev.wait_done()  # is reused, also when one of them failed
        for ev in events:
            ev.synchronize()  # raises the step's first error
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

    def has_image(self, key: str) -> bool:
        """Whether an embedding for this image content is cached (a racy hint for submit:
        a miss at prefill time falls back to decoding there)."""
        return key in self._image_keys

    # ------------------------------------------------------------------ admin
    def synchronize(self) -> None:
        self.flush()
        self.streams.compute.synchronize()
        self.streams.copy.synchronize()

    def close(self) -> None:
        self.streams.close()
