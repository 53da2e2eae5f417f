"""segment: the object's box (x, y, size) then its outline as SVG path text (spec §7.4).

Outputs: ``k = 0`` coordinate ``x`` (no decision step: the token is ignored), ``k = 1``
coordinate ``y``, ``k = 2`` size -> the ``Box`` (streamed at once), ``k >= 3`` path text
tokens restricted by the compiled ``PathGrammar``. The mask of output ``k >= 4`` depends
on token ``k - 1``, so ``spec(k)`` returns ``None`` until that output was advanced;
output 3 always starts the grammar, so its spec is static.

Finish reasons: eos -> "stop" (the grammar only allows it where the path may end);
``max_tokens`` outputs (box steps included) -> "length"; a token the grammar forbids
(only possible if the device ignored the mask) -> "error". The raw path text is parsed
and mapped into the box by ``registry.final_output`` off the scheduler thread.
"""

from __future__ import annotations

from moonpipe.request import FinishReason
from moonpipe.skills.base import Advance
from moonpipe.skills.path_grammar import DEAD, PathGrammar
from moonpipe.skills.spatial import COORD_SPEC, SIZE_SPEC, box_from_centre
from moonpipe.step import StepOutput, StepSpec

__all__ = ["PATH_START", "SegmentConstraint"]

PATH_START = 3  # index of the first path-text output


class SegmentConstraint:
    """Per-request state of a segment request: the box centre and the grammar state."""

    __slots__ = ("_eos_id", "_grammar", "_max_tokens", "_num_outputs", "_prompt_ids",
                 "_state", "_state_specs", "_x", "_y")

    def __init__(
        self,
        prompt_ids: list[int],
        *,
        grammar: PathGrammar,
        state_specs: tuple[StepSpec, ...],
        max_tokens: int,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"SegmentConstraint: max_tokens must be >= 1, got {max_tokens}")
        if len(state_specs) != len(grammar.transitions):
            raise ValueError("SegmentConstraint: one StepSpec per grammar state is required")
        self._prompt_ids = prompt_ids
        self._grammar = grammar
        self._state_specs = state_specs
        self._eos_id = grammar.eos_id
        self._max_tokens = max_tokens
        self._num_outputs = 0
        self._state = grammar.start
        self._x = 0.0
        self._y = 0.0

    @property
    def prompt_ids(self) -> list[int]:
        return self._prompt_ids

    def spec(self, k: int) -> StepSpec | None:
        if k < 2:
            return COORD_SPEC
        if k == 2:
            return SIZE_SPEC
        if k == PATH_START:
            return self._state_specs[self._grammar.start]
        if k != self._num_outputs or self._state == DEAD:
            return None  # output k - 1 not advanced yet (or the request already ended)
        return self._state_specs[self._state]

    def advance(self, output: StepOutput) -> Advance:
        k = self._num_outputs
        self._num_outputs = k + 1
        out_of_tokens = self._num_outputs >= self._max_tokens
        if k >= PATH_START:
            token = output.token
            if token == self._eos_id:
                self._state = DEAD
                return Advance(finish_reason=FinishReason.STOP)
            self._state = self._grammar.next_state(self._state, token)
            if self._state == DEAD:
                return Advance(token_ids=[token], finish_reason=FinishReason.ERROR)
            return Advance(token_ids=[token], finish_reason=FinishReason.LENGTH if out_of_tokens else None)
        if k == 0:
            self._x = output.coord
        elif k == 1:
            self._y = output.coord
        else:
            w, h = output.size
            return Advance(
                boxes=[box_from_centre(self._x, self._y, w, h)],
                finish_reason=FinishReason.LENGTH if out_of_tokens else None,
            )
        return Advance(finish_reason=FinishReason.LENGTH) if out_of_tokens else Advance()
