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
from moonpipe.skills.base import Advance, StepOutput, StepSpec
from moonpipe.skills.spatial import COORD_SPEC

__all__ = ["PointConstraint"]


class PointConstraint:
    """Per-request state of a point request: the pending ``x`` and the counts."""

    __slots__ = ("_eos_id", "_max_objects", "_max_tokens", "_num_objects", "_num_outputs",
                 "_prompt_ids", "_x")

    def __init__(self, prompt_ids: list[int], *, eos_id: int, max_tokens: int, max_objects: int) -> None:
        if max_tokens < 1 or max_objects < 1:
            raise ValueError("PointConstraint: max_tokens and max_objects must be >= 1")
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

    def spec(self, k: int) -> StepSpec | None:
        return COORD_SPEC

    def advance(self, output: StepOutput) -> Advance:
        k = self._num_outputs
        self._num_outputs = k + 1
        if k & 1 == 0:  # decision + x
            if output.token == self._eos_id:
                return Advance(finish_reason=FinishReason.STOP)
            self._x = output.coord
            if self._num_outputs >= self._max_tokens:
                return Advance(finish_reason=FinishReason.LENGTH)
            return Advance()
        self._num_objects += 1
        done = self._num_objects >= self._max_objects or self._num_outputs >= self._max_tokens
        return Advance(
            points=[Point(self._x, output.coord)],
            finish_reason=FinishReason.LENGTH if done else None,
        )
