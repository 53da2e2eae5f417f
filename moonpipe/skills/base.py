"""The constraint interface: how a skill plugs into the scheduler.

The scheduler never asks which skill a request is. Per request it holds one
``Constraint`` and, for every output position ``k`` (``k = 0`` is the output of the
prefill, ``k = 1`` the first decode step, ...), asks ``spec(k)``: what the device must
compute from that step's hidden state and how the result becomes the next step's input.
After the step's output reaches the host (commit), it calls ``advance(output)``, which
returns what to stream and whether the request is done.

Timeline (pipeline depth 2): output ``k`` is *sampled* either ahead of time (when
``spec(k)`` does not depend on outputs not yet committed, e.g. plain text) or at
finalize, right after output ``k - 1`` was committed ("commit before finalize"). So
``spec(k)`` may return ``None`` until ``advance`` has seen output ``k - 1``; after that it
must return a ``StepSpec``.

Device side, every step computes per row: a token from the lm logits (masked by the
row's vocabulary mask and banned ids, then greedy or temperature/top-p sampling), and,
when ``spatial`` asks for it, a coordinate (``argmax(decode_coordinate(h)) / 1024``) or a
size (``2 ** (bin / 1023 * 10 - 10)`` per axis). ``feed`` says which of those becomes the
next input embedding: ``wte[token]``, ``encode_coordinate(coord)`` or ``encode_size(size)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from moonpipe.request import Box, Point

__all__ = [
    "Advance",
    "Constraint",
    "Feed",
    "Spatial",
    "StepOutput",
    "StepSpec",
    "VocabMask",
]


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

    MAX_BANNED = 4

    def __post_init__(self) -> None:
        if len(self.banned_ids) > self.MAX_BANNED:
            raise ValueError(f"StepSpec: at most {self.MAX_BANNED} banned ids")


@dataclass(frozen=True, slots=True)
class StepOutput:
    """One step's output for one request, as read from the host mirror at commit."""

    token: int
    coord: float = 0.0
    size: tuple[float, float] = (0.0, 0.0)


@dataclass(slots=True)
class Advance:
    """What ``Constraint.advance`` produced from one output.

    ``token_ids``: generated text tokens to stream (detokenised off the scheduler thread).
    ``points`` / ``boxes``: objects completed by this output (streamed as they complete).
    ``finish_reason``: set when this output ended the request (``FinishReason`` values).
    """

    token_ids: list[int] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    finish_reason: str | None = None


class Constraint(Protocol):
    """Per-request decoding state machine of one skill (see module docstring)."""

    @property
    def prompt_ids(self) -> list[int]:
        """Prompt token ids that follow BOS + the 729 image tokens."""
        ...

    def spec(self, k: int) -> StepSpec | None:
        """Spec for output ``k``; ``None`` only while output ``k - 1`` is not yet advanced."""
        ...

    def advance(self, output: StepOutput) -> Advance:
        """Consume the next output in order. Never called after a finish was returned."""
        ...
