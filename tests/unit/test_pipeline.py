"""Property tests of the pure two-slot pipeline state machine (invariants I1-I7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.scheduler.pipeline import Pipeline, PipelineError

OPS = st.lists(
    st.tuples(st.sampled_from(["submit", "launch", "finalize", "commit", "finish"]),
              st.integers(0, 2**16)),
    min_size=1,
    max_size=200,
)


class Model:
    """A reference driver: random scheduler-like use, checking every invariant."""

    def __init__(self, depth: int) -> None:
        self.p: Pipeline[int] = Pipeline(depth=depth)
        self.depth = depth
        self.active: list[int] = []  # submitted, not finished
        self.next_seq = 0
        self.launched: list[int] = []  # step ids in launch order
        self.committed: list[int] = []
        self.slot_busy: dict[int, int] = {}  # slot -> step id using it
        self.released: list[int] = []
        self.finished: set[int] = set()

    def run(self, op: str, arg: int) -> None:
        p = self.p
        if op == "submit":
            self.active.append(self.next_seq)
            self.next_seq += 1
        elif op == "launch" and p.can_launch():
            seqs = [s for i, s in enumerate(self.active) if (arg >> (i % 16)) & 1]
            step = p.launch(seqs)
            assert step.slot not in self.slot_busy, "I3: slot reused before its commit"
            self.slot_busy[step.slot] = step.step_id
            self.launched.append(step.step_id)
            for s in seqs:
                assert 1 <= p.inflight_refs(s) <= self.depth, "I6"
        elif op == "finalize" and p.newest is not None and not p.newest.finalized:
            p.mark_finalized(p.newest)
        elif op == "commit" and p.oldest is not None and p.oldest.finalized:
            step, released = p.commit_oldest()
            self.committed.append(step.step_id)
            assert self.committed == self.launched[: len(self.committed)], "I1: commit order"
            del self.slot_busy[step.slot]
            self._released(released)
        elif op == "finish" and self.active:
            s = self.active.pop(arg % len(self.active))
            self.finished.add(s)
            if p.finish(s):
                self._released([s])
            else:
                assert p.is_zombie(s)
        assert p.num_inflight <= self.depth, "I2"

    def _released(self, seqs: list[int]) -> None:
        for s in seqs:
            assert s in self.finished, "I7: released before finished"
            assert p_refs(self.p, s) == 0, "I7: released while referenced"
            assert s not in self.released, "I7: released twice"
            self.released.append(s)
            self.p.forget(s)

    def drain(self) -> None:
        p = self.p
        for _ in list(self.active):
            self.run("finish", 0)
        while p.num_inflight:
            if not p.oldest.finalized:  # type: ignore[union-attr]
                p.mark_finalized(p.oldest)  # type: ignore[arg-type]
            self.run("commit", 0)
        assert sorted(self.released) == list(range(self.next_seq)), "every sequence released once"
        assert p.num_zombies == 0


def p_refs(p: Pipeline[int], s: int) -> int:
    return p.inflight_refs(s)


@pytest.mark.parametrize("depth", [1, 2])
@given(ops=OPS)
@settings(max_examples=200, deadline=None)
def test_random_schedules_keep_invariants(depth: int, ops: list[tuple[str, int]]) -> None:
    m = Model(depth)
    for op, arg in ops:
        m.run(op, arg)
    m.drain()


def test_launch_requires_previous_step_sampled() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    p.launch([1])
    assert not p.can_launch()
    with pytest.raises(PipelineError, match="I2/I4"):
        p.launch([1])


def test_commit_before_finalize_is_refused() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    p.launch([1])
    with pytest.raises(PipelineError, match="I5"):
        p.commit_oldest()


def test_zombie_released_only_after_last_commit() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    a = p.launch([7])
    p.mark_finalized(a)
    b = p.launch([7])
    p.mark_finalized(b)
    assert p.inflight_refs(7) == 2
    _, rel = p.commit_oldest()
    assert rel == []
    assert p.finish(7) is False  # still referenced by step b: a zombie
    assert p.is_zombie(7) and p.num_zombies == 1
    _, rel = p.commit_oldest()
    assert rel == [7]
    assert p.num_zombies == 0


def test_depth_one_allows_one_step() -> None:
    p: Pipeline[int] = Pipeline(depth=1)
    s = p.launch([1])
    p.mark_finalized(s)
    assert not p.can_launch()
    p.commit_oldest()
    assert p.can_launch()


def test_slots_alternate() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    slots = []
    for _ in range(4):
        s = p.launch([1])
        p.mark_finalized(s)
        slots.append(s.slot)
        p.commit_oldest()
    assert slots == [0, 1, 0, 1]


def test_double_finish_is_a_bug() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    assert p.finish(3)
    with pytest.raises(PipelineError):
        p.finish(3)
