"""Per-request state inside the scheduler.

A sequence goes WAITING -> ADMITTED (pages + seq row reserved) -> RUNNING (prefill
launched) -> FINISHED (its final output emitted; a *zombie* while a launched step still
carries it) -> RELEASED (pages and seq row returned). Only the sequence table
(``sequences.py``) changes ``state``. Output positions: ``k = 0`` is sampled from the
prefill, ``k = 1..`` from decode steps; ``num_launched`` is the next ``k`` to launch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from moonpipe.request import Box, Point, Request, Timings
from moonpipe.request import Sink as SinkProto
from moonpipe.skills.base import Constraint

__all__ = ["SeqState", "Sequence"]


class SeqState(enum.Enum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    RUNNING = "running"
    FINISHED = "finished"
    RELEASED = "released"


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside the engine (compared and hashed by identity)."""

    seq_id: int
    request: Request
    sink: SinkProto
    constraint: Constraint
    prompt_ids: tuple[int, ...]
    crops: np.ndarray | None  # (n, 378, 378, 3) uint8; None when the image was cached at submit
    tiling: tuple[int, int]
    image_key: str
    image: bytes
    temperature: float
    top_p: float
    num_prompt_tokens: int  # tokens of the prefill: BOS + image tokens + prompt
    max_outputs: int  # outputs this sequence may produce (max_tokens after context fit)
    num_positions: int  # KV positions reserved: prefill + max_outputs + 1
    timings: Timings
    state: SeqState = SeqState.WAITING
    seq_row: int = -1  # row of the per-sequence device buffers (next input, page table)
    page_ids: tuple[int, ...] = ()
    cached_prefix: bool = False  # its prefix KV is a prefix-cache entry's: prefill only the prompt
    # with a cached prefix: the entry's page where the prefix ends, copied into ours (held
    # by this sequence while it lives, so no eviction can hand it out before the copy)
    boundary_src: int = 0
    position: int = 0  # next KV position a decode step writes
    num_launched: int = 0
    num_committed: int = 0
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def held_pages(self) -> tuple[int, ...]:
        """Every page this sequence holds a reference to: its KV pages, and the page its
        boundary page is copied from."""
        return (*self.page_ids, self.boundary_src) if self.boundary_src else self.page_ids

    @property
    def finished(self) -> bool:
        return self.state is SeqState.FINISHED or self.state is SeqState.RELEASED
