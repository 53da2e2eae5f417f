"""The two-slot pipeline as a pure state machine (no torch, no threads).

Timeline at depth 2 (one compute stream; ``F`` forward, ``S`` sampling, ``C`` commit)::

    GPU  | F(t) S(t) | F(t+1) S(t+1) | F(t+2) ...
    CPU  |  launch t+1 -> commit t -> finalize t+1 | launch t+2 -> commit t+1 -> ...
              (slot B)     (slot A)    (slot B)

The forward of step t+1 is enqueued before step t is committed, so the device never
waits for the host's bookkeeping; the token sampled at t feeds t+1 straight from device
memory. Depth 1 is the blocking loop: launch t -> finalize t -> commit t.

Invariants (asserted here, exercised by property tests):
  I1 steps commit in launch order (the oldest in-flight step commits first);
  I2 at most ``depth`` steps are in flight (launched, not committed);
  I3 a slot is reused only after the commit of the step that last used it;
  I4 a step launches only when every earlier step has been finalized (sampled): its
     forward reads the tokens those steps sampled;
  I5 a step commits only after it was finalized;
  I6 ``0 <= inflight_refs(seq) <= depth``; a sequence joins a step at most once;
  I7 a sequence is *released* (its pages freed) exactly once, only when it is finished
     and no in-flight step references it ("finalize early, release late": a finished
     sequence still riding in a launched step is a zombie).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["InFlightStep", "Pipeline", "PipelineError"]

K = TypeVar("K", bound=Hashable)
NUM_SLOTS = 2


class PipelineError(AssertionError):
    """An invariant of the pipeline would be broken (a scheduler bug, never user input)."""


@dataclass(slots=True)
class InFlightStep(Generic[K]):
    """A launched, not yet committed step."""

    step_id: int
    slot: int
    seq_ids: tuple[K, ...]
    finalized: bool = False


@dataclass(slots=True)
class Pipeline(Generic[K]):
    """Bookkeeping of in-flight steps, slots, per-sequence refs and zombies."""

    depth: int = 2
    _inflight: deque[InFlightStep[K]] = field(default_factory=deque)
    _refs: dict[K, int] = field(default_factory=dict)
    _finished: set[K] = field(default_factory=set)
    _released: set[K] = field(default_factory=set)
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

    def can_launch(self) -> bool:
        """I2 and I4: room in the pipeline and every in-flight step already sampled."""
        return len(self._inflight) < self.depth and all(s.finalized for s in self._inflight)

    def inflight_refs(self, seq: K) -> int:
        return self._refs.get(seq, 0)

    def is_zombie(self, seq: K) -> bool:
        return seq in self._finished and self._refs.get(seq, 0) > 0

    @property
    def num_zombies(self) -> int:
        return sum(1 for s in self._finished if self._refs.get(s, 0) > 0)

    # -------------------------------------------------------------- transitions
    def launch(self, seq_ids: Iterable[K]) -> InFlightStep[K]:
        if not self.can_launch():
            raise PipelineError("I2/I4: launch with a full pipeline or an unsampled step in flight")
        seqs = tuple(seq_ids)
        if len(set(seqs)) != len(seqs):
            raise PipelineError("I6: a sequence appears twice in one step")
        for s in seqs:
            if s in self._finished or s in self._released:
                raise PipelineError(f"a finished sequence {s!r} cannot join a new step")
        slot = self._next_slot
        if any(st.slot == slot for st in self._inflight):
            raise PipelineError("I3: slot reused before its commit")
        step = InFlightStep(step_id=self._next_step, slot=slot, seq_ids=seqs)
        self._next_step += 1
        self._next_slot = (slot + 1) % NUM_SLOTS
        for s in seqs:
            refs = self._refs.get(s, 0) + 1
            if refs > self.depth:
                raise PipelineError("I6: inflight_refs above depth")
            self._refs[s] = refs
        self._inflight.append(step)
        return step

    def mark_finalized(self, step: InFlightStep[K]) -> None:
        if step not in self._inflight:
            raise PipelineError("finalize of a step that is not in flight")
        step.finalized = True

    def commit_oldest(self) -> tuple[InFlightStep[K], list[K]]:
        """Pop the oldest step (I1). Returns it and the sequences now releasable (I7)."""
        if not self._inflight:
            raise PipelineError("commit with nothing in flight")
        step = self._inflight.popleft()
        if not step.finalized:
            raise PipelineError("I5: commit before finalize")
        released: list[K] = []
        for s in step.seq_ids:
            refs = self._refs[s] - 1
            if refs < 0:
                raise PipelineError("I6: inflight_refs below zero")
            if refs == 0:
                del self._refs[s]
                if s in self._finished:
                    released.append(s)
            else:
                self._refs[s] = refs
        for s in released:
            self._release(s)
        return step, released

    def finish(self, seq: K) -> bool:
        """Mark ``seq`` finished (result emitted). Returns True if it is released now
        (no step references it), False if it stays a zombie until its last commit."""
        if seq in self._finished or seq in self._released:
            raise PipelineError(f"sequence {seq!r} finished twice")
        self._finished.add(seq)
        if self._refs.get(seq, 0) == 0:
            self._release(seq)
            return True
        return False

    def is_finished(self, seq: K) -> bool:
        return seq in self._finished or seq in self._released

    def _release(self, seq: K) -> None:
        if seq in self._released:
            raise PipelineError(f"I7: sequence {seq!r} released twice")
        self._finished.discard(seq)
        self._released.add(seq)

    def forget(self, seq: K) -> None:
        """Drop a released sequence from the history (bounded memory in long runs)."""
        if seq not in self._released:
            raise PipelineError(f"forget of an unreleased sequence {seq!r}")
        self._released.discard(seq)
