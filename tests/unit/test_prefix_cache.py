"""The prefix cache through the scheduler and a model-free runner, and the refcounted
page allocator under random use.

The fake runner models the KV (``fake_runner.py``): every forward checks that each
position it attends to holds its own request's tags, so sharing pages, copying the
boundary page and reusing freed pages are all checked, not assumed.
"""

from __future__ import annotations

import pytest
from fake_runner import PAGE_SIZE, PREFIX, FakeRunner, Harness, output_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduler import WORKLOAD, reference

from moonpipe.request import FinishReason
from moonpipe.scheduler.pages import Holder, PageAllocator
from moonpipe.scheduler.sequence import SeqState

FULL = PREFIX // PAGE_SIZE  # shared full pages of a prefix (1 with the fake's sizes)


def _finish(h: Harness) -> None:
    h.run_until_idle()
    for rid, ev in h.output.finals.items():
        assert ev.error is None, (rid, ev.error)


def test_a_second_request_about_an_image_prefills_only_its_prompt() -> None:
    h = Harness(prefix_cache_size=4)
    first = h.submit("first", max_outputs=6, min_outputs=6, prompt=(1, 2))
    _finish(h)
    second = h.submit("second", max_outputs=6, min_outputs=6, prompt=(3, 4, 5))
    h.tick()
    assert second.cached_prefix and second.page_ids[:FULL] == first.page_ids[:FULL]
    assert second.page_ids[FULL] != first.page_ids[FULL]  # its own copy of the boundary page
    assert second.boundary_src == first.page_ids[FULL]
    _finish(h)
    assert h.runner.cached_prefills == 1
    cache = h.table.prefix_cache
    assert (cache.hits, cache.misses) == (1, 1)
    assert h.output.tokens("second") == output_stream((3, 4, 5), "img", 6)
    h.assert_drained()


def test_entries_are_usable_by_later_steps_only_once_they_committed() -> None:
    h = Harness(prefix_cache_size=4, max_batch_size=4)
    h.submit("a", max_outputs=8, min_outputs=8)
    h.tick()  # a's prefill launched: its entry is pending
    entry = h.table.prefix_cache.entries()[0]
    assert not entry.ready
    b = h.submit("b", max_outputs=8, min_outputs=8)
    h.tick()  # b admitted while the entry is pending (all its pages its own); a's prefill commits
    assert b.state is SeqState.ADMITTED and not b.cached_prefix and entry.ready
    c = h.submit("c", max_outputs=8, min_outputs=8)
    h.tick()  # b's prefill: it swaps its unwritten prefix pages for the entry's; c admitted onto it
    assert b.cached_prefix and c.cached_prefix
    assert b.page_ids[:FULL] == c.page_ids[:FULL] == entry.pages[:FULL]
    _finish(h)
    assert h.runner.cached_prefills == 2
    h.assert_drained()


@pytest.mark.parametrize("depth", [1, 2])
def test_a_burst_about_one_new_image_computes_its_prefix_once(depth: int) -> None:
    h = Harness(depth=depth, prefix_cache_size=4, max_batch_size=8, num_pages=80)
    for i in range(8):
        h.submit(f"r{i}", max_outputs=4, min_outputs=4, prompt=(i,))
    _finish(h)
    cache = h.table.prefix_cache
    # the first prefill step: r0 computes, r1-r3 share its pending entry (same step);
    # the second: r4-r7, admitted with pages of their own, swap them for the ready entry
    assert (cache.hits, cache.misses) == (7, 1) and h.runner.prefill_sizes == [4, 4]
    for i in range(8):
        assert h.output.tokens(f"r{i}") == output_stream((i,), "img", 4)
    h.assert_drained()


def test_a_prefix_that_ends_on_a_page_boundary_shares_every_prefix_page() -> None:
    h = Harness(prefix_cache_size=4, runner=FakeRunner(page_size=PREFIX))
    first = h.submit("first", max_outputs=6, min_outputs=6)
    _finish(h)
    second = h.submit("second", max_outputs=6, min_outputs=6, prompt=(7, 8))
    _finish(h)
    assert second.cached_prefix and second.boundary_src == 0  # nothing to copy
    assert second.page_ids[0] == first.page_ids[0]
    assert h.output.tokens("second") == output_stream((7, 8), "img", 6)
    h.assert_drained()


def test_the_page_a_hit_copies_from_is_never_handed_out_before_the_hit_ends() -> None:
    h = Harness(prefix_cache_size=4, max_batch_size=4)
    h.submit("first", max_outputs=4, min_outputs=4)
    _finish(h)
    hit = h.submit("hit", max_outputs=4, min_outputs=4, prompt=(5,))
    h.scheduler._drain_inbox(block=False)  # admission only, no launch yet
    h.table.admit(0.0)
    assert hit.state is SeqState.ADMITTED and hit.boundary_src
    h.table.prefix_cache.clear()  # the entry goes before the hit's prefill copies its page
    other = h.submit("other", max_outputs=4, min_outputs=4, image="other")
    _finish(h)
    assert hit.boundary_src not in other.page_ids
    assert h.output.tokens("hit") == output_stream((5,), "img", 4)
    h.assert_drained()


def test_a_hit_that_cannot_fit_beside_its_entry_runs_as_a_miss() -> None:
    # 11 usable pages; the entry of "c" holds 2 (1 shared + the boundary page).
    h = Harness(prefix_cache_size=4, num_pages=12, max_batch_size=4)
    h.submit("cached", max_outputs=4, min_outputs=4, image="c")
    _finish(h)
    # 10 prompt positions + 30 outputs + 1 = 41 positions, 11 pages: beside the entry it
    # needs 10 private pages and 9 are free; without the entry all 11 are free
    big = h.submit("big", max_outputs=30, min_outputs=30, image="c", prompt=(1, 2, 3, 4, 5))
    h.tick()
    assert big.state is not SeqState.WAITING and not big.cached_prefix
    _finish(h)
    h.assert_drained()


def test_a_failed_prefill_drops_its_entry() -> None:
    h = Harness(prefix_cache_size=4, runner=FakeRunner(fail_launches=[0]))
    h.submit("a", max_outputs=4, min_outputs=4)
    h.run_until_idle()
    assert h.output.error("a") is not None and len(h.table.prefix_cache) == 0
    b = h.submit("b", max_outputs=4, min_outputs=4)
    h.run_until_idle()
    assert not b.cached_prefix and h.output.tokens("b") == output_stream((1, 2), "img", 4)
    assert len(h.table.prefix_cache) == 1
    h.assert_drained()


def test_capacity_keeps_the_most_recently_used_images() -> None:
    h = Harness(prefix_cache_size=2, num_pages=200)
    for i in range(3):
        h.submit(f"r{i}", max_outputs=2, min_outputs=2, image=f"i{i}")
        _finish(h)
    assert sorted(e.key for e in h.table.prefix_cache.entries()) == ["i1", "i2"]
    h.submit("again1", max_outputs=2, min_outputs=2, image="i1")  # i1 becomes most recent
    h.submit("new3", max_outputs=2, min_outputs=2, image="i3")
    _finish(h)
    assert sorted(e.key for e in h.table.prefix_cache.entries()) == ["i1", "i3"]
    h.assert_drained()


def test_memory_pressure_evicts_unused_entries_before_a_request_waits() -> None:
    # 3 pages per request (5 prefix + 2 prompt + 4 outputs + 1 = 12 positions); 2 per entry.
    h = Harness(prefix_cache_size=8, num_pages=12, max_batch_size=4)  # 11 usable pages
    for i in range(4):  # 4 entries x 2 pages stay behind: 8 pages
        h.submit(f"fill{i}", max_outputs=4, min_outputs=4, image=f"i{i}")
        _finish(h)
    assert h.table.allocator.num_cache_only == 8 and h.table.allocator.num_free == 3
    a = h.submit("a", max_outputs=4, min_outputs=4, image="new-a")  # 3 pages: fits as is
    b = h.submit("b", max_outputs=4, min_outputs=4, image="new-b")  # needs an eviction
    h.tick()
    assert a.state is not SeqState.WAITING and b.state is not SeqState.WAITING
    keys = [e.key for e in h.table.prefix_cache.entries()]
    assert "i0" not in keys and "i3" in keys  # least recently used went first
    _finish(h)
    h.assert_drained()


def test_no_eviction_when_it_would_not_let_the_request_in() -> None:
    h = Harness(prefix_cache_size=8, num_pages=12, max_batch_size=4)  # 11 usable pages
    h.submit("cached", max_outputs=4, min_outputs=4, image="c")
    _finish(h)  # its entry keeps 2 pages: 9 free
    hog = h.submit("hog", max_outputs=24, min_outputs=24, image="h")  # 32 positions: 8 pages
    h.tick()
    assert hog.state is not SeqState.WAITING  # 1 free page left, 2 reclaimable
    waiting = h.submit("waits", max_outputs=24, min_outputs=24, image="w")  # 8 pages: not now
    h.tick()
    assert waiting.state is SeqState.WAITING
    assert "c" in [e.key for e in h.table.prefix_cache.entries()]  # not evicted for nothing
    _finish(h)
    h.assert_drained()


@pytest.mark.parametrize("depth", [1, 2])
def test_many_requests_about_one_image_share_its_prefix(depth: int) -> None:
    h = Harness(depth=depth, prefix_cache_size=4, max_batch_size=4, num_pages=40)
    prompts = [(i, i + 1) for i in range(12)]
    for i, prompt in enumerate(prompts):
        h.submit(f"r{i}", max_outputs=5, min_outputs=5, prompt=prompt)
    _finish(h)
    for i, prompt in enumerate(prompts):
        assert h.output.tokens(f"r{i}") == output_stream(prompt, "img", 5)
    cache = h.table.prefix_cache
    assert cache.hits + cache.misses == 12 and cache.hits >= 8
    h.assert_drained()


@given(workload=WORKLOAD, fail=st.lists(st.integers(0, 40), max_size=2), max_batch=st.integers(1, 4),
       num_pages=st.integers(12, 40), cache_size=st.integers(1, 4))
@settings(max_examples=60, deadline=None)
def test_random_workloads_give_the_same_outputs_with_and_without_the_cache(
        workload: list[tuple[int, int, int, bool, int | None]], fail: list[int], max_batch: int,
        num_pages: int, cache_size: int) -> None:
    from test_scheduler import _run

    for depth in (1, 2):
        runs = {size: _run(workload, depth, fail, max_batch, num_pages, prefix_cache_size=size)
                for size in (0, cache_size)}
        for size, h in runs.items():
            assert len(h.output.finals) == len(workload)
            for i, (_, n, image, _, _) in enumerate(workload):
                ev = h.output.finals[f"r{i}"]
                got = list(ev.all_token_ids)
                if ev.error is None and ev.finish_reason != FinishReason.CANCELLED:
                    assert got == reference((image, n), f"i{image}", n), (depth, size, i)
            h.assert_drained()


OPS = st.lists(st.tuples(st.sampled_from(["allocate", "share", "release"]), st.sampled_from(["seq", "cache"]),
                         st.integers(0, 2**16)), max_size=120)


@given(ops=OPS)
@settings(max_examples=200, deadline=None)
def test_the_allocator_counts_every_holder(ops: list[tuple[str, Holder, int]]) -> None:
    alloc = PageAllocator(12)
    held: list[tuple[Holder, list[int]]] = []  # the model: every holder's page list
    for op, kind, arg in ops:
        if op == "allocate" and alloc.can_allocate(arg % 4):
            held.append((kind, alloc.allocate(arg % 4, kind)))
        elif op == "share" and held:
            pages = held[arg % len(held)][1]
            alloc.share(pages, kind)
            held.append((kind, list(pages)))
        elif op == "release" and held:
            k, pages = held.pop(arg % len(held))
            alloc.release(pages, k)
        alloc.check()
        for page in range(1, 12):
            for k in ("seq", "cache"):
                assert alloc.refs(page, k) == sum(pages.count(page) for hk, pages in held if hk == k)
        in_use = {p for _, pages in held for p in pages}
        assert alloc.num_held == len(in_use) and alloc.num_free == 11 - len(in_use)
        seq_pages = {p for k, pages in held if k == "seq" for p in pages}
        assert alloc.num_seq_pages == len(seq_pages) and alloc.num_cache_only == len(in_use - seq_pages)


def test_releasing_a_page_one_does_not_hold_is_a_bug() -> None:
    alloc = PageAllocator(4)
    pages = alloc.allocate(2, "seq")
    with pytest.raises(AssertionError, match="does not hold"):
        alloc.release(pages, "cache")
    alloc.release(pages, "seq")
    with pytest.raises(AssertionError, match="does not hold"):
        alloc.release(pages, "seq")
