"""The two-slot pipeline as a pure state machine (no torch, no threads).

Timeline at depth 2 (one compute stream; ``F`` forward, ``S`` sampling, ``C`` commit)::

    GPU  | F(t) S(t) | F(t+1) S(t+1) | F(t+2) ...
    CPU  |  launch t+1 -> commit t -> sample t+1 | launch t+2 -> commit t+1 -> ...
              (slot B)     (slot A)   (slot B)

The forward of step t+1 is enqueued before step t is committed, so the device never
waits for the host's bookkeeping; the token sampled at t feeds t+1 straight from device
memory. Depth 1 is the blocking loop: launch t -> sample t -> commit t. A step is
*sampled* once its sampling is enqueued: at launch when every row's spec is known
("sample ahead"), else right after the previous step's commit.

Invariants (asserted here, exercised by property tests):
  I1 steps commit in launch order (the oldest in-flight step commits first);
  I2 at most ``depth`` steps are in flight (launched, not committed);
  I3 a slot is reused only after the commit of the step that last used it;
  I4 a step launches only when every earlier step has been sampled: its forward reads
     the values those steps sampled;
  I5 a step commits only after it was sampled;
  I6 ``0 <= inflight_refs(row) <= depth``; a row joins a step at most once;
  I7 a commit reports every row whose last in-flight reference it dropped, so whoever
     owns the rows' lifecycle can release a finished one then ("finish early, release
     late": a finished sequence still riding in a launched step is a zombie).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from moonpipe.step import NUM_SLOTS

__all__ = ["InFlightStep", "Pipeline", "PipelineError"]

K = TypeVar("K", bound=Hashable)


class PipelineError(AssertionError):
    """An invariant of the pipeline would be broken (a scheduler bug, never user input)."""


@dataclass(slots=True, eq=False)
class InFlightStep(Generic[K]):
    """A launched, not yet committed step and everything its commit needs.

    ``rows[i]`` produces its output number ``output_index[i]`` in this step (0 for a
    prefill, the sequence's next output for a decode step).
    """

    step_id: int
    slot: int
    rows: tuple[K, ...]
    output_index: tuple[int, ...]
    prefill: bool
    sampled: bool = False


@dataclass(slots=True)
class Pipeline(Generic[K]):
    """Bookkeeping of in-flight steps, slots and per-row references."""

    depth: int = 2
    _inflight: deque[InFlightStep[K]] = field(default_factory=deque)
    _refs: dict[K, int] = field(default_factory=dict)
    _next_step: int = 0
    _next_slot: int = 0

    def __post_init__(self) -> None:
        if self.depth not in (1, 2):
            raise ValueError("pipeline depth must be 1 or 2")

    # ------------------------------------------------------------------ queries
    @property
    def num_inflight(self) -> int:
        return len(self._inflight)

    @property
    def oldest(self) -> InFlightStep[K] | None:
        return self._inflight[0] if self._inflight else None

    @property
    def newest(self) -> InFlightStep[K] | None:
        return self._inflight[-1] if self._inflight else None

    @property
    def next_step_id(self) -> int:
        """The id the next launched step gets."""
        return self._next_step

    def can_launch(self) -> bool:
        """I2 and I4: room in the pipeline and every in-flight step already sampled."""
        return len(self._inflight) < self.depth and all(s.sampled for s in self._inflight)

    def inflight_refs(self, row: K) -> int:
        return self._refs.get(row, 0)

    # -------------------------------------------------------------- transitions
    def launch(self, rows: Sequence[K], output_index: Sequence[int], *, prefill: bool) -> InFlightStep[K]:
        if not self.can_launch():
            raise PipelineError("I2/I4: launch with a full pipeline or an unsampled step in flight")
        rows = tuple(rows)
        if len(set(rows)) != len(rows):
            raise PipelineError("I6: a row appears twice in one step")
        if len(output_index) != len(rows):
            raise PipelineError("every row of a step needs its output index")
        slot = self._next_slot
        if any(st.slot == slot for st in self._inflight):
            raise PipelineError("I3: slot reused before its commit")
        for r in rows:
            refs = self._refs.get(r, 0) + 1
            if refs > self.depth:
                raise PipelineError("I6: inflight_refs above depth")
            self._refs[r] = refs
        step = InFlightStep(step_id=self._next_step, slot=slot, rows=rows,
                            output_index=tuple(output_index), prefill=prefill)
        self._next_step += 1
        self._next_slot = (slot + 1) % NUM_SLOTS
        self._inflight.append(step)
        return step

    def mark_sampled(self, step: InFlightStep[K]) -> None:
        if step not in self._inflight:
            raise PipelineError("sampling of a step that is not in flight")
        step.sampled = True

    def commit_oldest(self) -> tuple[InFlightStep[K], list[K]]:
        """Pop the oldest step (I1). Returns it and its rows that no in-flight step
        references any more (I7)."""
        if not self._inflight:
            raise PipelineError("commit with nothing in flight")
        step = self._inflight[0]
        if not step.sampled:
            raise PipelineError("I5: commit before sampling")
        self._inflight.popleft()
        unreferenced: list[K] = []
        for r in step.rows:
            refs = self._refs[r] - 1
            if refs < 0:
                raise PipelineError("I6: inflight_refs below zero")
            if refs == 0:
                del self._refs[r]
                unreferenced.append(r)
            else:
                self._refs[r] = refs
        return step, unreferenced
