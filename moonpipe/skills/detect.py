"""detect: greedy boxes (centre x, centre y, size) until the decision is eos (spec §7.2).

Outputs cycle with period 3: ``k % 3 == 0`` decision token (unmasked greedy; eos stops)
and coordinate ``x``; ``1``: coordinate ``y``; ``2``: size ``(w, h)`` -> a ``Box`` from
centre and size, clamped to [0, 1]. The first two feed the coordinate back, the third
the size. Finish reasons as for point (eos -> "stop"; max_objects / max_tokens -> "length").
"""

from __future__ import annotations

from moonpipe.request import FinishReason
from moonpipe.skills.base import Advance
from moonpipe.skills.spatial import COORD_SPEC, SIZE_SPEC, ObjectConstraint, box_from_centre
from moonpipe.step import StepOutput, StepSpec

__all__ = ["DetectConstraint"]


class DetectConstraint(ObjectConstraint):
    """Per-request state of a detect request: the pending centre and the counts."""

    __slots__ = ("_y",)

    def __init__(self, prompt_ids: list[int], *, eos_id: int, max_tokens: int, max_objects: int) -> None:
        super().__init__(prompt_ids, eos_id=eos_id, max_tokens=max_tokens, max_objects=max_objects)
        self._y = 0.0

    def spec(self, k: int) -> StepSpec | None:
        return SIZE_SPEC if k % 3 == 2 else COORD_SPEC

    def advance(self, output: StepOutput) -> Advance:
        phase = self._next_output() % 3
        if phase == 0:  # decision + x
            stop = self._decide(output)
            if stop is not None:
                return stop
        elif phase == 1:
            self._y = output.coord
        else:
            w, h = output.size
            return Advance(boxes=[box_from_centre(self._x, self._y, w, h)], finish_reason=self._object_done())
        return Advance(finish_reason=FinishReason.LENGTH) if self._out_of_tokens() else Advance()
