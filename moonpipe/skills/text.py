"""Plain text answers (caption and query): the constraint of spec §7.1.

Output ``k = 0`` is sampled from the prefill logits with no restriction; every later
output bans ``answer_id``. ``eos`` ends the request ("stop") and is not emitted; the
``max_tokens``-th emitted token ends it with "length". Nothing depends on committed
outputs, so ``spec(k)`` is static and never ``None`` (outputs can be sampled ahead).
"""

from __future__ import annotations

from moonpipe.request import FinishReason
from moonpipe.skills.base import Advance
from moonpipe.step import Feed, StepOutput, StepSpec

__all__ = ["TextConstraint", "text_specs"]


def text_specs(answer_id: int, greedy: bool) -> tuple[StepSpec, StepSpec]:
    """The two specs of a text answer: (prefill output, every decode output)."""
    return (
        StepSpec(feed=Feed.TOKEN, greedy=greedy),
        StepSpec(feed=Feed.TOKEN, banned_ids=(answer_id,), greedy=greedy),
    )


class TextConstraint:
    """Per-request state of a caption/query answer: counts emitted tokens, stops on eos."""

    __slots__ = ("_eos_id", "_first", "_max_tokens", "_num_emitted", "_prompt_ids", "_rest")

    def __init__(
        self,
        prompt_ids: list[int],
        *,
        eos_id: int,
        max_tokens: int,
        specs: tuple[StepSpec, StepSpec],
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"TextConstraint: max_tokens must be >= 1, got {max_tokens}")
        self._prompt_ids = prompt_ids
        self._eos_id = eos_id
        self._max_tokens = max_tokens
        self._first, self._rest = specs
        self._num_emitted = 0

    @property
    def prompt_ids(self) -> list[int]:
        return self._prompt_ids

    def spec(self, k: int) -> StepSpec | None:
        return self._first if k == 0 else self._rest

    def advance(self, output: StepOutput) -> Advance:
        token = output.token
        if token == self._eos_id:
            return Advance(finish_reason=FinishReason.STOP)
        self._num_emitted += 1
        if self._num_emitted >= self._max_tokens:
            return Advance(token_ids=[token], finish_reason=FinishReason.LENGTH)
        return Advance(token_ids=[token])
