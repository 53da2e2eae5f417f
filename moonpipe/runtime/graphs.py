"""Batch/page buckets and CUDA-graph capture of the decode forward.

A decode step runs for a *bucket* of rows ``(B_bucket, P_bucket)``: the batch is padded up
to the next batch bucket with rows that read the scratch seq slot, sit at position 0 and
point every page-table entry at scratch page 0 (their KV writes land nowhere that
matters), and the page table is cut at the next power-of-two page bucket. With buckets
the decode forward has static shapes and reads/writes only slot-owned buffers, so on
CUDA it is captured once per (slot, bucket) at engine start and replayed afterwards: one
launch instead of hundreds, and no allocation in the steady-state decode path.

Graphs share one memory pool: they all run on the one compute stream, one at a time, and
every output that must survive (hidden, logits) is copied into the slot's own buffers
inside the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

__all__ = ["DecodeGraphs", "batch_buckets", "bucket_for", "page_buckets"]

log = logging.getLogger("moonpipe.graphs")


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 8 up to ``max_batch`` (always included)."""
    out = [b for b in (1, 2, 4) if b < max_batch]
    out += list(range(8, max_batch, 8))
    out.append(max_batch)
    return sorted(set(out))


def page_buckets(max_pages: int) -> list[int]:
    """Powers of two up to ``max_pages`` (always included)."""
    out, p = [], 1
    while p < max_pages:
        out.append(p)
        p *= 2
    out.append(max_pages)
    return out


def bucket_for(n: int, buckets: list[int]) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


class DecodeGraphs:
    """CUDA graphs of ``forward(slot)`` keyed by (slot index, batch bucket, page bucket)."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self._stream = stream
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple[int, int, int], torch.cuda.CUDAGraph] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def capture(self, key: tuple[int, int, int], forward: Callable[[], None]) -> None:
        """Warm ``forward`` up on the capture stream, then record it. Called at start-up
        with the slot staged as all-padding rows (writes go to scratch page 0)."""
        with torch.cuda.stream(self._stream):
            for _ in range(2):  # first-time library setup (cuBLAS/cuDNN plans) outside capture
                forward()
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
            forward()
        self._graphs[key] = graph

    def replay(self, key: tuple[int, int, int]) -> None:
        self._graphs[key].replay()
