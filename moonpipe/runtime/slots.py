"""StepSlot: every buffer one pipeline step needs, allocated once.

Two slots alternate (``scheduler/pipeline.py`` decides which). Nothing in the steady-state
decode path allocates device memory: inputs are staged into the slot's host buffers
(pinned on CUDA), uploaded into its device buffers on the upload stream, and outputs are
copied back into its host mirrors on the copy stream. A slot is reusable only after the
commit that read its host mirrors has finished (pipeline invariant I3).

On CPU the "device" and "host" buffers are the same tensors: there is no second memory,
and the slot-reuse rule already guarantees the worker finished reading them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from moonpipe.runtime.streams import Event
from moonpipe.step import MAX_BANNED

__all__ = ["SlotEvents", "StepShape", "StepSlot"]


@dataclass(frozen=True, slots=True)
class StepShape:
    """The host-side sizes of the step using a slot, passed along with every call on it
    (a process worker has its own copy of the slot object: only its tensors are shared)."""

    batch: int
    bucket: int
    num_pages: int


@dataclass(slots=True)
class SlotEvents:
    """Events of the step currently using the slot (None until recorded)."""

    forward_start: Event | None = None
    forward_end: Event | None = None
    sample_start: Event | None = None
    sample_end: Event | None = None
    copy_done: Event | None = None

    def all(self) -> list[Event]:
        return [e for e in (self.forward_start, self.forward_end, self.sample_start,
                            self.sample_end, self.copy_done) if e is not None]


def _pair(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(host, device) buffers; the same tensor on CPU, pinned host + device on CUDA."""
    if device.type == "cpu":
        t = torch.zeros(shape, dtype=dtype)
        return t, t
    return torch.zeros(shape, dtype=dtype).pin_memory(), torch.zeros(shape, dtype=dtype, device=device)


@dataclass(slots=True)
class StepSlot:
    """The fixed working set of one step, for up to ``max_batch`` rows."""

    index: int
    max_batch: int
    max_pages: int
    dim: int
    vocab: int
    device: torch.device
    model_dtype: torch.dtype
    events: SlotEvents = field(default_factory=SlotEvents)
    # --- staged step inputs (host view is numpy for cheap vectorised writes)
    seq_rows: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) long
    positions: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) long
    page_table: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B, P) long
    # --- staged sampling parameters
    temperature: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) f32
    top_p: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) f32
    greedy: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) bool
    mask_ids: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) long
    banned: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B, K) long
    banned_valid: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B, K) bool
    feed: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) long
    # --- device outputs of the forward / sampling
    hidden: torch.Tensor = field(init=False)  # (B, D) model dtype
    logits: torch.Tensor = field(init=False)  # (B, V) f32
    # --- sampled outputs: (host mirror, device)
    out_token: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) long
    out_coord: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B,) f32
    out_size: tuple[torch.Tensor, torch.Tensor] = field(init=False)  # (B, 2) f32
    # --- per-step facts the host knows (set when the step is staged)
    batch: int = 0
    bucket: int = 0
    num_pages: int = 0
    error: Exception | None = None  # a launch of this slot's step failed (read_outputs raises it)

    def __post_init__(self) -> None:
        b, p, dev = self.max_batch, self.max_pages, self.device
        self.seq_rows = _pair((b,), torch.long, dev)
        self.positions = _pair((b,), torch.long, dev)
        self.page_table = _pair((b, p), torch.long, dev)
        self.temperature = _pair((b,), torch.float32, dev)
        self.top_p = _pair((b,), torch.float32, dev)
        self.greedy = _pair((b,), torch.bool, dev)
        self.mask_ids = _pair((b,), torch.long, dev)
        self.banned = _pair((b, MAX_BANNED), torch.long, dev)
        self.banned_valid = _pair((b, MAX_BANNED), torch.bool, dev)
        self.feed = _pair((b,), torch.long, dev)
        self.hidden = torch.zeros((b, self.dim), dtype=self.model_dtype, device=dev)
        self.logits = torch.zeros((b, self.vocab), dtype=torch.float32, device=dev)
        self.out_token = _pair((b,), torch.long, dev)
        self.out_coord = _pair((b,), torch.float32, dev)
        self.out_size = _pair((b, 2), torch.float32, dev)

    def shape(self) -> StepShape:
        return StepShape(self.batch, self.bucket, self.num_pages)

    def adopt(self, shape: StepShape) -> None:
        """Take the sizes the host staged (a no-op in the process that staged them)."""
        self.batch, self.bucket, self.num_pages = shape.batch, shape.bucket, shape.num_pages

    @staticmethod
    def host_np(pair: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        """Numpy view of a host buffer (shares memory)."""
        return pair[0].numpy()

    def upload_inputs(self) -> None:
        """Copy staged step inputs host -> device (enqueue on the upload stream)."""
        if self.device.type == "cpu":
            return
        b = self.bucket
        # Whole rows: [:b] of a row-major (B, P) buffer is contiguous, so the copy is one
        # async DMA from pinned memory (a [:b, :p] slice would need a staging copy).
        for host, dev in (self.seq_rows, self.positions, self.page_table):
            dev[:b].copy_(host[:b], non_blocking=True)

    def upload_sampling(self) -> None:
        """Copy staged sampling parameters host -> device (upload stream)."""
        if self.device.type == "cpu":
            return
        b = self.bucket
        for host, dev in (self.temperature, self.top_p, self.greedy, self.mask_ids,
                          self.banned, self.banned_valid, self.feed):
            dev[:b].copy_(host[:b], non_blocking=True)

    def download_outputs(self) -> None:
        """Copy sampled outputs device -> host mirrors (copy stream)."""
        if self.device.type == "cpu":
            return
        b = self.batch
        for host, dev in (self.out_token, self.out_coord, self.out_size):
            host[:b].copy_(dev[:b], non_blocking=True)
