"""Spatial helpers shared by point, detect and segment: cached step specs and boxes.

A spatial step reads a coordinate (or a size) from the step's hidden state and feeds
its encoding back as the next input embedding (spec §6, §7.2). The token the device
samples at such a step is the continue/stop decision of point/detect (unmasked greedy,
as in the reference) or is ignored (segment's bounding box).
"""

from __future__ import annotations

from typing import Any

from moonpipe.model.tokenizer import Tokenizer
from moonpipe.request import Box, FinishReason
from moonpipe.skills.base import Advance
from moonpipe.step import Feed, Spatial, StepOutput, StepSpec

__all__ = ["COORD_SPEC", "SIZE_SPEC", "ObjectConstraint", "box_from_centre", "object_prompt_ids"]

# Immutable, shared by every request: spec() returns these without allocating.
COORD_SPEC = StepSpec(feed=Feed.COORD, spatial=Spatial.COORD, greedy=True)
SIZE_SPEC = StepSpec(feed=Feed.SIZE, spatial=Spatial.SIZE, greedy=True)


def _clamp01(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def box_from_centre(x: float, y: float, w: float, h: float) -> Box:
    """The box ``(x - w/2, y - h/2, x + w/2, y + h/2)`` clamped to [0, 1].

    Arithmetic is Python float64 on the float32 values the device produced, which is
    exactly what the reference computes (``x.item() - w.item() / 2``).
    """
    half_w = w / 2
    half_h = h / 2
    return Box(
        x_min=_clamp01(x - half_w),
        y_min=_clamp01(y - half_h),
        x_max=_clamp01(x + half_w),
        y_max=_clamp01(y + half_h),
    )


def object_prompt_ids(template: dict[str, Any], object_name: str, tokenizer: Tokenizer) -> list[int]:
    """``prefix + encode(" " + object) + suffix``: the point/detect/segment prompt (§7.2)."""
    return (
        [int(i) for i in template["prefix"]]
        + tokenizer.encode(" " + object_name)
        + [int(i) for i in template["suffix"]]
    )


class ObjectConstraint:
    """What point and detect share: the prompt, the limits and the counts, and the
    decision step that opens every object (unmasked greedy token: eos stops, anything
    else continues, and the step's coordinate is the object's ``x``).

    Finish reasons: eos decision -> "stop"; the ``max_objects``-th object or the
    ``max_tokens``-th output -> "length" (see point.py)."""

    __slots__ = ("_eos_id", "_max_objects", "_max_tokens", "_num_objects", "_num_outputs",
                 "_prompt_ids", "_x")

    def __init__(self, prompt_ids: list[int], *, eos_id: int, max_tokens: int, max_objects: int) -> None:
        if max_tokens < 1 or max_objects < 1:
            raise ValueError(f"{type(self).__name__}: max_tokens and max_objects must be >= 1")
        self._prompt_ids = prompt_ids
        self._eos_id = eos_id
        self._max_tokens = max_tokens
        self._max_objects = max_objects
        self._num_outputs = 0
        self._num_objects = 0
        self._x = 0.0

    @property
    def prompt_ids(self) -> list[int]:
        return self._prompt_ids

    def _next_output(self) -> int:
        """Count one output; returns its index ``k``."""
        k = self._num_outputs
        self._num_outputs = k + 1
        return k

    def _out_of_tokens(self) -> bool:
        return self._num_outputs >= self._max_tokens

    def _decide(self, output: StepOutput) -> Advance | None:
        """The decision step: a final ``Advance`` on eos, else None (``x`` is kept)."""
        if output.token == self._eos_id:
            return Advance(finish_reason=FinishReason.STOP)
        self._x = output.coord
        return None

    def _object_done(self) -> str | None:
        """Count a completed object; the finish reason if it was the last one allowed."""
        self._num_objects += 1
        done = self._num_objects >= self._max_objects or self._out_of_tokens()
        return FinishReason.LENGTH if done else None
