"""ModelRunner: the device side of the engine, as the scheduler drives it (``StepRunner``).

Owns the model, the paged KV tensors, the step slots, the per-sequence "next input"
buffers, the vocabulary-mask table, the streams and a mirror of the compute side's image
cache. For each call of the scheduler it stages host data into a slot's buffers and asks
the streams to run ``DeviceWork`` methods (``device_work.py``); every ``launch_*`` only
*enqueues* work and returns.

Per-sequence device state, indexed by the sequence's *seq row* (row ``max_seqs`` is a
scratch row for padded batch rows)::

    next_token (S+1,) long      token sampled at the sequence's last step
    next_coord (S+1,) f32       coordinate value sampled at its last step
    next_size  (S+1, 2) f32     size (w, h) sampled at its last step
    feed_kind  (S+1,) long      which of the three the next forward embeds (Feed)

Sampling writes them (scatter by seq row); the next forward reads them (gather by seq
row). The compute stream is in order, so a forward always sees the values its
sequence's previous step sampled, with no host round trip and whatever the batch
composition of the two steps.
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Callable, Sequence

import numpy as np
import torch

from moonpipe.config import EngineConfig, KVLayout, ModelConfig, torch_dtype
from moonpipe.model.moondream import MoondreamModel
from moonpipe.runtime.cuda_stream import CudaStream
from moonpipe.runtime.device_work import DeviceWork, FaultHook
from moonpipe.runtime.graphs import DecodeGraphs, batch_buckets, bucket_for, page_buckets
from moonpipe.runtime.image_lru import ImageLRU
from moonpipe.runtime.kv_cache import KVCache
from moonpipe.runtime.slots import StepSlot
from moonpipe.runtime.stream_set import make_streams
from moonpipe.runtime.streams import StreamSet
from moonpipe.step import NUM_SLOTS, PrefillItem, SamplingPlan, StepOutput, VocabMask

__all__ = ["ModelRunner"]

log = logging.getLogger("moonpipe.runner")


class ModelRunner:
    """Device-side state and the enqueueing of forwards, sampling and copies."""

    def __init__(self, model: MoondreamModel, model_cfg: ModelConfig, cfg: EngineConfig, layout: KVLayout,
                 masks: Sequence[VocabMask], fault_hook: FaultHook | None = None) -> None:
        self.model_cfg = model_cfg
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        dtype = torch_dtype(cfg.dtype)
        text = model_cfg.text
        self.max_seqs = cfg.max_batch_size
        self.layout = layout
        self.kv = KVCache(text, layout, dtype, self.device)
        self.slots = [
            StepSlot(i, self.max_seqs, layout.max_pages_per_seq, text.dim, text.vocab_size, self.device, dtype)
            for i in range(NUM_SLOTS)
        ]
        s = self.max_seqs + 1  # + scratch row for padding
        self.scratch_seq_row = self.max_seqs
        vocab = text.vocab_size
        table = torch.ones((1 + len(masks), vocab), dtype=torch.bool)
        for i, m in enumerate(masks, start=1):
            table[i] = False
            ids = torch.tensor([t for t in m.allowed_ids if 0 <= t < vocab], dtype=torch.long)
            table[i, ids] = True
        self.cpu_worker = cfg.cpu_worker if self.device.type == "cpu" else "none"
        if fault_hook is not None and self.cpu_worker == "process":
            try:
                pickle.dumps(fault_hook)
            except Exception as exc:
                raise TypeError(f"a fault hook for a process compute worker must pickle: {exc}") from exc
        self._fault_hook = fault_hook  # replayed CUDA graphs run no Python: launch calls it
        self.work = DeviceWork(
            model=model, model_cfg=model_cfg, cfg=cfg, dtype=dtype, k=self.kv.k, v=self.kv.v,
            slots=self.slots,
            next_token=torch.zeros(s, dtype=torch.long, device=self.device),
            next_coord=torch.zeros(s, dtype=torch.float32, device=self.device),
            next_size=torch.zeros((s, 2), dtype=torch.float32, device=self.device),
            feed_kind=torch.zeros(s, dtype=torch.long, device=self.device),
            mask_table=table.to(self.device), fault_hook=fault_hook,
        )
        self.streams: StreamSet = make_streams(self.device, self.work, cfg.compute_threads, self.cpu_worker)
        # The keys the compute side's image cache holds (or will hold, by the time a later
        # prefill runs: the stream is in order), mirrored in its LRU order whichever
        # process holds the embeddings. A hint: a miss only costs a decode.
        self._image_keys: ImageLRU[None] = ImageLRU(cfg.image_cache_size)
        self.batch_buckets = batch_buckets(self.max_seqs)
        self.page_buckets = page_buckets(layout.max_pages_per_seq)
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

    def _capture_graphs(self) -> None:
        """Capture every (slot, batch bucket, page bucket) decode graph up front, with the
        slot staged as padding rows only (scratch seq row, position 0, page 0)."""
        compute = self.streams.compute
        assert isinstance(compute, CudaStream)
        graphs = DecodeGraphs(compute.stream)
        empty = np.empty(0, dtype=np.int64)
        no_rows = np.zeros((0, self.layout.max_pages_per_seq), dtype=np.int64)
        with torch.inference_mode():
            for slot in self.slots:
                for bb in reversed(self.batch_buckets):  # largest first: the pool fits the rest
                    for pb in reversed(self.page_buckets):
                        self.stage_rows(slot, empty, empty, no_rows, bb, pb)
                        slot.upload_inputs()
                        torch.cuda.synchronize(self.device)
                        graphs.capture((slot.index, bb, pb), functools.partial(self.work.decode, slot.index, slot.shape()))
        torch.cuda.synchronize(self.device)
        self.work.graphs = graphs
        log.info("captured %d decode CUDA graphs", len(graphs))

    # ------------------------------------------------------------------ staging
    def stage_rows(self, slot: StepSlot, seq_rows: np.ndarray, positions: np.ndarray,
                   page_rows: np.ndarray, bucket: int, num_pages: int) -> None:
        """Write a decode step's inputs into the slot's host buffers (vectorised): rows
        ``[0, len(seq_rows))`` are real, ``[len, bucket)`` padding (scratch seq row,
        position 0, scratch page 0). ``page_rows``: (B, max_pages)."""
        b = len(seq_rows)
        slot.batch = b
        slot.bucket = bucket
        slot.num_pages = num_pages
        rows, pos = StepSlot.host_np(slot.seq_rows), StepSlot.host_np(slot.positions)
        table = StepSlot.host_np(slot.page_table)
        rows[:b] = seq_rows
        rows[b:bucket] = self.scratch_seq_row
        pos[:b] = positions
        pos[b:bucket] = 0
        table[:b, :num_pages] = page_rows[:, :num_pages]  # zeros (scratch page) past a row's pages
        table[b:bucket, :num_pages] = 0

    def _stage_sampling(self, slot: StepSlot, plan: SamplingPlan) -> None:
        b = slot.batch
        StepSlot.host_np(slot.temperature)[:b] = plan.temperature
        StepSlot.host_np(slot.top_p)[:b] = plan.top_p
        StepSlot.host_np(slot.greedy)[:b] = plan.greedy
        StepSlot.host_np(slot.mask_ids)[:b] = plan.mask_ids
        StepSlot.host_np(slot.banned)[:b] = plan.banned
        StepSlot.host_np(slot.banned_valid)[:b] = plan.banned_valid
        StepSlot.host_np(slot.feed)[:b] = plan.feed

    # ------------------------------------------------------------------ launches
    def _guarded(self, slot: StepSlot, fn: Callable[[], None]) -> None:
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
        """Hand the work enqueued since the last flush to the workers (one message to a
        process worker instead of one per call)."""
        self.streams.flush()

    def launch_decode(self, slot_index: int, seq_rows: np.ndarray, positions: np.ndarray,
                      page_rows: np.ndarray) -> None:
        """Stage one decode step, enqueue its upload and forward (+ lm head)."""
        slot = self.slots[slot_index]
        slot.error = None
        b = len(seq_rows)
        num_pages = int(positions.max()) // self.layout.page_size + 1
        if self.pad_buckets:  # static shapes: pad to the buckets a graph was captured for
            self.stage_rows(slot, seq_rows, positions, page_rows, bucket_for(b, self.batch_buckets),
                            bucket_for(num_pages, self.page_buckets))
        else:
            self.stage_rows(slot, seq_rows, positions, page_rows, b, num_pages)
        self._guarded(slot, lambda: self._launch_decode(slot))

    def _upload(self, method: str, slot: StepSlot) -> None:
        st = self.streams
        st.upload.call(method, slot.index, slot.shape())
        if st.upload is not st.compute:
            st.compute.wait(st.upload.record())

    def _launch_decode(self, slot: StepSlot) -> None:
        st = self.streams
        self._upload("upload_inputs", slot)
        slot.events.forward_start = st.compute.record()
        if self.graphs is not None:
            if self._fault_hook is not None:
                self._fault_hook("decode", StepSlot.host_np(slot.seq_rows)[: slot.batch].tolist())
            st.compute.call("replay", (slot.index, slot.bucket, slot.num_pages))
        else:
            st.compute.call("decode", slot.index, slot.shape())
        slot.events.forward_end = st.compute.record()

    def launch_prefill(self, slot_index: int, items: Sequence[PrefillItem]) -> None:
        """Stage a prefill step, enqueue the image encoder + prompt prefill of each item."""
        slot = self.slots[slot_index]
        slot.error = None
        b = len(items)
        slot.batch = slot.bucket = b
        slot.num_pages = 0
        StepSlot.host_np(slot.seq_rows)[:b] = [it.seq_row for it in items]
        self._guarded(slot, lambda: self._launch_prefill(slot, items))

    def _launch_prefill(self, slot: StepSlot, items: Sequence[PrefillItem]) -> None:
        st = self.streams
        self._upload("upload_inputs", slot)
        slot.events.forward_start = st.compute.record()
        st.compute.call("prefill", slot.index, slot.shape(), list(items))
        slot.events.forward_end = st.compute.record()
        for it in items:  # the work's cache sees these prefills in this order (a cached
            if not it.cached_prefix:  # prefix needs no embedding: the work does not touch it)
                self._image_keys.put(it.image_key, None)

    def launch_sampling(self, slot_index: int, plan: SamplingPlan) -> None:
        """Stage sampling parameters; enqueue their upload, sampling, and the D2H copy."""
        slot = self.slots[slot_index]
        self._stage_sampling(slot, plan)
        self._guarded(slot, lambda: self._launch_sampling(slot, plan))

    def _launch_sampling(self, slot: StepSlot, plan: SamplingPlan) -> None:
        st = self.streams
        self._upload("upload_sampling", slot)
        slot.events.sample_start = st.compute.record()
        st.compute.call("sample", slot.index, slot.shape(), plan.flags)
        done = st.compute.record()
        slot.events.sample_end = done
        st.copy.wait(done)
        st.copy.call("download_outputs", slot.index, slot.shape())
        slot.events.copy_done = st.copy.record()

    def read_outputs(self, slot_index: int) -> list[StepOutput]:
        """Wait for the slot's outputs on the host and return one ``StepOutput`` per row.

        Raises the exception of a failed launch, forward or sampling of this step, so the
        scheduler can fail exactly the requests of this step.
        """
        slot = self.slots[slot_index]
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
        tokens = slot.out_token[0][:b].tolist()
        coords = slot.out_coord[0][:b].tolist()
        sizes = slot.out_size[0][:b].tolist()
        return [StepOutput(t, c, (w, h)) for t, c, (w, h) in zip(tokens, coords, sizes)]

    def step_times_ms(self, slot_index: int) -> tuple[float, float]:
        """(forward, sampling) device times of the slot's last step; events must be done."""
        ev = self.slots[slot_index].events
        fwd = samp = 0.0
        if ev.forward_start is not None and ev.forward_end is not None:
            fwd = ev.forward_start.elapsed_ms(ev.forward_end)
        if ev.sample_start is not None and ev.sample_end is not None:
            samp = ev.sample_start.elapsed_ms(ev.sample_end)
        return fwd, samp

    def has_image(self, key: str) -> bool:
        """Whether an embedding for this image content is cached (a racy hint for submit
        and prefill batching: a miss at prefill time falls back to decoding there)."""
        return key in self._image_keys

    # ------------------------------------------------------------------ admin
    def synchronize(self) -> None:
        self.flush()
        self.streams.compute.synchronize()
        self.streams.copy.synchronize()

    def close(self) -> None:
        self.streams.close()
