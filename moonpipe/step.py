"""The step contract: what one pipeline step carries between skills, scheduler and runtime.

Skills say per row what a step must compute and feed back (``StepSpec``); the scheduler
turns a step's specs into arrays (``SamplingPlan``) and its new requests into
``PrefillItem``s; the runtime runs them and returns one ``StepOutput`` per row. Every
layer imports this module and it imports none of theirs (no torch), so the layers meet
here instead of importing each other.

Device side, every step computes per row: a token from the lm logits (masked by the
row's vocabulary mask and banned ids, then greedy or temperature/top-p sampling), and,
when ``spatial`` asks for it, a coordinate (``argmax(decode_coordinate(h)) / 1024``) or a
size (``2 ** (bin / 1023 * 10 - 10)`` per axis). ``feed`` says which of those becomes the
next input embedding: ``wte[token]``, ``encode_coordinate(coord)`` or ``encode_size(size)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_BANNED",
    "NUM_SLOTS",
    "Feed",
    "PrefillItem",
    "SamplingFlags",
    "SamplingPlan",
    "Spatial",
    "StepOutput",
    "StepSpec",
    "VocabMask",
]

NUM_SLOTS = 2  # ping-pong decode slots: a step uses one while the other's step commits
MAX_BANNED = 4  # banned ids per row and step (the slot's banned-id buffer width)


class Feed(enum.IntEnum):
    """Which value of a step's output is fed back as the next input embedding."""

    TOKEN = 0
    COORD = 1
    SIZE = 2


class Spatial(enum.IntEnum):
    """Which region decoder (if any) is read from a step's hidden state."""

    NONE = 0
    COORD = 1
    SIZE = 2


@dataclass(frozen=True, slots=True)
class VocabMask:
    """A named set of allowed token ids, registered once at engine start.

    The engine uploads every registered mask into one device table ``[num_masks, vocab]``;
    a step spec refers to it by index (0 is always "everything allowed").
    """

    name: str
    allowed_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StepSpec:
    """What to compute for one output position of one request.

    ``mask`` is an index into the engine's vocabulary-mask table (0 = no restriction);
    ``banned_ids`` (at most ``MAX_BANNED``) are set to -inf on top of it; ``greedy`` forces
    argmax regardless of the request's temperature.
    """

    feed: Feed = Feed.TOKEN
    spatial: Spatial = Spatial.NONE
    mask: int = 0
    banned_ids: tuple[int, ...] = ()
    greedy: bool = False

    def __post_init__(self) -> None:
        if len(self.banned_ids) > MAX_BANNED:
            raise ValueError(f"StepSpec: at most {MAX_BANNED} banned ids")


@dataclass(frozen=True, slots=True)
class StepOutput:
    """One step's output for one row, as read from the host mirror at commit."""

    token: int
    coord: float = 0.0
    size: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True, slots=True)
class PrefillItem:
    """One new sequence of a prefill step."""

    seq_row: int
    image_key: str
    crops: np.ndarray | None  # (n, 378, 378, 3) uint8; None: the embedding or the prefix was cached at submit
    tiling: tuple[int, int]
    image: bytes  # the encoded file, decoded at prefill only if a cached embedding was evicted
    prompt_ids: tuple[int, ...]
    page_ids: tuple[int, ...]
    # the prefix KV is already in page_ids (a prefix-cache entry's shared pages): copy page
    # ``boundary_src`` into ``boundary_dst`` (0: no copy) and prefill only the prompt
    cached_prefix: bool = False
    boundary_src: int = 0
    boundary_dst: int = 0


@dataclass(frozen=True, slots=True)
class SamplingFlags:
    """Batch-wide facts the host knows before sampling (they pick code paths)."""

    any_mask: bool
    any_banned: bool
    any_sampled: bool
    any_coord: bool
    any_size: bool


@dataclass(frozen=True, slots=True)
class SamplingPlan:
    """Per-row sampling inputs of one step (B rows) and the batch-wide flags
    (built by ``scheduler/sampling_plan.py``, staged into a slot by the runner)."""

    temperature: np.ndarray  # (B,) f32
    top_p: np.ndarray  # (B,) f32
    greedy: np.ndarray  # (B,) bool
    mask_ids: np.ndarray  # (B,) int64, rows of the vocabulary-mask table
    banned: np.ndarray  # (B, MAX_BANNED) int64
    banned_valid: np.ndarray  # (B, MAX_BANNED) bool
    feed: np.ndarray  # (B,) int64, Feed values
    flags: SamplingFlags
