"""detect: greedy boxes (centre x, centre y, size) until the decision is eos (spec §7.2).

Outputs cycle with period 3: ``k % 3 == 0`` decision token (unmasked greedy; eos stops)
and coordinate ``x``; ``1``: coordinate ``y``; ``2``: size ``(w, h)`` -> a ``Box`` from
centre and size, clamped to [0, 1]. The first two feed the coordinate back, the third
the size. Finish reasons as for point (eos -> "stop"; max_objects / max_tokens -> "length").
"""

from __future__ import annotations

from moonpipe.request import FinishReason
from moonpipe.skills.base import Advance, StepOutput, StepSpec
from moonpipe.skills.spatial import COORD_SPEC, SIZE_SPEC, box_from_centre

__all__ = ["DetectConstraint"]


class DetectConstraint:
    """Per-request state of a detect request: the pending centre and the counts."""

    __slots__ = ("_eos_id", "_max_objects", "_max_tokens", "_num_objects", "_num_outputs",
                 "_prompt_ids", "_x", "_y")

    def __init__(self, prompt_ids: list[int], *, eos_id: int, max_tokens: int, max_objects: int) -> None:
        if max_tokens < 1 or max_objects < 1:
            raise ValueError("DetectConstraint: max_tokens and max_objects must be >= 1")
        self._prompt_ids = prompt_ids
        self._eos_id = eos_id
        self._max_tokens = max_tokens
        self._max_objects = max_objects
        self._num_outputs = 0
        self._num_objects = 0
        self._x = 0.0
        self._y = 0.0

    @property
    def prompt_ids(self) -> list[int]:
        return self._prompt_ids

    def spec(self, k: int) -> StepSpec | None:
        return SIZE_SPEC if k % 3 == 2 else COORD_SPEC

    def advance(self, output: StepOutput) -> Advance:
        k = self._num_outputs
        self._num_outputs = k + 1
        phase = k % 3
        out_of_tokens = self._num_outputs >= self._max_tokens
        if phase == 0:  # decision + x
            if output.token == self._eos_id:
                return Advance(finish_reason=FinishReason.STOP)
            self._x = output.coord
        elif phase == 1:
            self._y = output.coord
        else:
            w, h = output.size
            self._num_objects += 1
            done = out_of_tokens or self._num_objects >= self._max_objects
            return Advance(
                boxes=[box_from_centre(self._x, self._y, w, h)],
                finish_reason=FinishReason.LENGTH if done else None,
            )
        return Advance(finish_reason=FinishReason.LENGTH) if out_of_tokens else Advance()
