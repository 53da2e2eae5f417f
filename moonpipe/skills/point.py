"""point: greedy (x, y) pairs until the decision token is eos (spec §7.2).

Outputs cycle with period 2. Even ``k``: the step's token is the continue/stop decision
(unmasked greedy: ``eos`` stops, anything else continues) and its coordinate is ``x``;
odd ``k``: the coordinate is ``y`` and a ``Point`` is complete. Both feed the coordinate
back, so every spec is the same static ``COORD_SPEC``.

Finish reasons: eos decision -> "stop"; the ``max_objects``-th point -> "length" (the
reference loop ``while t != eos and len(out) < max_objects`` ends there without looking
at another decision, so the list was cut, not ended by the model; ``FinishReason``
documents max_objects under "length"); ``max_tokens`` outputs (every output counts,
spatial ones included) -> "length".
"""

from __future__ import annotations

from moonpipe.request import FinishReason, Point
from moonpipe.skills.base import Advance
from moonpipe.skills.spatial import COORD_SPEC, ObjectConstraint
from moonpipe.step import StepOutput, StepSpec

__all__ = ["PointConstraint"]


class PointConstraint(ObjectConstraint):
    """Per-request state of a point request: the pending ``x`` and the counts."""

    __slots__ = ()

    def spec(self, k: int) -> StepSpec | None:
        return COORD_SPEC

    def advance(self, output: StepOutput) -> Advance:
        if self._next_output() & 1 == 0:  # decision + x
            stop = self._decide(output)
            if stop is not None:
                return stop
            return Advance(finish_reason=FinishReason.LENGTH) if self._out_of_tokens() else Advance()
        return Advance(points=[Point(self._x, output.coord)], finish_reason=self._object_done())
