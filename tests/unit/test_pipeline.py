"""Property tests of the pure two-slot pipeline state machine (invariants I1-I7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.scheduler.pipeline import Pipeline, PipelineError

OPS = st.lists(
    st.tuples(st.sampled_from(["submit", "launch", "sample", "commit", "finish"]),
              st.integers(0, 2**16)),
    min_size=1,
    max_size=200,
)


class Model:
    """A reference driver: random scheduler-like use, checking every invariant.

    Rows finish at random ("finish early"); a finished row is released when a commit
    reports it unreferenced, or at once if no step carries it ("release late")."""

    def __init__(self, depth: int) -> None:
        self.p: Pipeline[int] = Pipeline(depth=depth)
        self.depth = depth
        self.active: list[int] = []  # submitted, not finished
        self.next_row = 0
        self.launched: list[int] = []  # step ids in launch order
        self.committed: list[int] = []
        self.slot_busy: dict[int, int] = {}  # slot -> step id using it
        self.refs: dict[int, int] = {}  # the model's own count of in-flight references
        self.zombies: set[int] = set()
        self.released: list[int] = []

    def run(self, op: str, arg: int) -> None:
        p = self.p
        if op == "submit":
            self.active.append(self.next_row)
            self.next_row += 1
        elif op == "launch" and p.can_launch():
            rows = [r for i, r in enumerate(self.active) if (arg >> (i % 16)) & 1]
            step = p.launch(rows, [arg % 7] * len(rows), prefill=bool(arg & 1))
            assert step.rows == tuple(rows) and step.prefill == bool(arg & 1)
            assert step.slot not in self.slot_busy, "I3: slot reused before its commit"
            self.slot_busy[step.slot] = step.step_id
            self.launched.append(step.step_id)
            for r in rows:
                self.refs[r] = self.refs.get(r, 0) + 1
                assert 1 <= p.inflight_refs(r) == self.refs[r] <= self.depth, "I6"
        elif op == "sample" and p.newest is not None and not p.newest.sampled:
            p.mark_sampled(p.newest)
        elif op == "commit" and p.oldest is not None and p.oldest.sampled:
            step, unreferenced = p.commit_oldest()
            self.committed.append(step.step_id)
            assert self.committed == self.launched[: len(self.committed)], "I1: commit order"
            del self.slot_busy[step.slot]
            for r in step.rows:
                self.refs[r] -= 1
            assert sorted(unreferenced) == sorted(r for r in step.rows if self.refs[r] == 0), "I7"
            for r in unreferenced:
                assert p.inflight_refs(r) == 0
                if r in self.zombies:
                    self.zombies.discard(r)
                    self._release(r)
        elif op == "finish" and self.active:
            r = self.active.pop(arg % len(self.active))
            if p.inflight_refs(r):
                self.zombies.add(r)
            else:
                self._release(r)
        assert p.num_inflight <= self.depth, "I2"

    def _release(self, r: int) -> None:
        assert r not in self.released, "released twice"
        assert self.p.inflight_refs(r) == 0, "released while referenced"
        self.released.append(r)

    def drain(self) -> None:
        p = self.p
        for _ in list(self.active):
            self.run("finish", 0)
        while p.num_inflight:
            if not p.oldest.sampled:  # type: ignore[union-attr]
                p.mark_sampled(p.oldest)  # type: ignore[arg-type]
            self.run("commit", 0)
        assert sorted(self.released) == list(range(self.next_row)), "every row released once"
        assert not self.zombies


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
    p.launch([1], [0], prefill=True)
    assert not p.can_launch()
    with pytest.raises(PipelineError, match="I2/I4"):
        p.launch([1], [1], prefill=False)


def test_commit_before_sampling_is_refused() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    p.launch([1], [0], prefill=True)
    with pytest.raises(PipelineError, match="I5"):
        p.commit_oldest()
    assert p.num_inflight == 1  # the refused commit changed nothing


def test_a_row_is_unreferenced_only_after_its_last_commit() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    a = p.launch([7], [1], prefill=False)
    p.mark_sampled(a)
    b = p.launch([7], [2], prefill=False)
    p.mark_sampled(b)
    assert p.inflight_refs(7) == 2
    _, unreferenced = p.commit_oldest()
    assert unreferenced == []  # still carried by step b: a zombie if it finished
    _, unreferenced = p.commit_oldest()
    assert unreferenced == [7]
    assert p.inflight_refs(7) == 0


def test_depth_one_allows_one_step() -> None:
    p: Pipeline[int] = Pipeline(depth=1)
    s = p.launch([1], [0], prefill=True)
    p.mark_sampled(s)
    assert not p.can_launch()
    p.commit_oldest()
    assert p.can_launch()


def test_slots_alternate() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    slots = []
    for k in range(4):
        s = p.launch([1], [k], prefill=k == 0)
        p.mark_sampled(s)
        slots.append(s.slot)
        p.commit_oldest()
    assert slots == [0, 1, 0, 1]


def test_a_row_twice_in_one_step_is_a_bug() -> None:
    p: Pipeline[int] = Pipeline(depth=2)
    with pytest.raises(PipelineError, match="I6"):
        p.launch([3, 3], [0, 0], prefill=True)
