"""The constraint interface: how a skill plugs into the scheduler.

The scheduler never asks which skill a request is. Per request it holds one
``Constraint`` and, for every output position ``k`` (``k = 0`` is the output of the
prefill, ``k = 1`` the first decode step, ...), asks ``spec(k)``: what the device must
compute from that step's hidden state and how the result becomes the next step's input.
After the step's output reaches the host (commit), it calls ``advance(output)``, which
returns what to stream and whether the request is done.

Timeline (pipeline depth 2): output ``k`` is *sampled* either ahead of time, at launch
(when ``spec(k)`` does not depend on outputs not yet committed, e.g. plain text), or
right after output ``k - 1`` was committed ("commit before sample"). So ``spec(k)`` may
return ``None`` until ``advance`` has seen output ``k - 1``; after that it must return a
``StepSpec``. What a spec asks of the device: ``moonpipe/step.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from moonpipe.request import Box, Point
from moonpipe.step import StepOutput, StepSpec

__all__ = ["Advance", "Constraint"]


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
