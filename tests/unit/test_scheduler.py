"""The scheduler against a model-free runner (``fake_runner.py``): zombies, prefill/decode
interleavings, aborts at every phase, faults, device loss and shutdown, one tick at a time.

The fake's k-th output of a request depends only on the request and k, so every
request that ends normally must produce exactly the reference stream whatever the depth,
batch composition, aborts or faults around it; the sequence table's invariants are
checked after every tick.
"""

from __future__ import annotations

import pytest
from fake_runner import STOP_EVERY, FakeRunner, Harness, output_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.errors import DeviceLost, EngineStopped, RequestFailed
from moonpipe.request import FinishReason
from moonpipe.scheduler.scheduler import Command
from moonpipe.scheduler.sequence import SeqState
from moonpipe.testing import InjectedCrash


def reference(prompt: tuple[int, ...], image: str, max_outputs: int) -> list[int]:
    """What a request (a ``StopConstraint`` with no minimum) that is neither aborted nor
    failed must produce."""
    out = []
    for t in output_stream(prompt, image, max_outputs):
        out.append(t)
        if t % STOP_EVERY == 0:
            break
    return out


def test_one_request_runs_prefill_then_decodes_to_its_reference() -> None:
    h = Harness()
    h.submit("a", max_outputs=40, min_outputs=39)
    h.run_until_idle()
    final = h.output.finals["a"]
    assert final.finish_reason == FinishReason.LENGTH and final.num_output_tokens == 40
    assert h.output.tokens("a") == output_stream((1, 2), "img", 40)
    assert h.runner.prefill_sizes == [1] and set(h.runner.decode_sizes) == {1}
    h.assert_drained()


@pytest.mark.parametrize("depth", [1, 2])
def test_a_request_ending_by_length_never_rides_an_extra_step(depth: int) -> None:
    h = Harness(depth=depth)
    seq = h.submit("a", max_outputs=3, min_outputs=10)  # ends by length at its 3rd output
    zombies = 0
    for _ in range(50):
        h.tick()
        zombies = max(zombies, h.table.num_zombies)
        if seq.state is SeqState.RELEASED:
            break
    assert h.output.finals["a"].num_output_tokens == 3
    assert zombies == 0  # no step is launched beyond max_outputs, so none carries it dead
    assert sum(h.runner.decode_sizes) == 2  # outputs 1 and 2 (output 0 is the prefill's)
    h.assert_drained()


def test_stop_at_a_token_makes_a_zombie_that_is_released_one_commit_later() -> None:
    h = Harness(depth=2)
    want = reference((1, 2), "img", 200)
    assert len(want) < 200, "the reference must stop early for this test"
    seq = h.submit("a", max_outputs=200)
    released_at = finished_at = None
    for tick in range(1000):
        h.tick()
        if seq.finished and finished_at is None:
            finished_at = tick
            assert seq.state is SeqState.FINISHED and h.table.num_zombies == 1  # rides step t+1
            assert h.table.allocator.num_held > 0  # its pages wait for that step
        if seq.state is SeqState.RELEASED:
            released_at = tick
            break
    assert finished_at is not None and released_at == finished_at + 1
    assert h.output.tokens("a") == want
    h.assert_drained()


def _decode_sampling_neighbours(runner: FakeRunner) -> list[str]:
    """For each sampling of a decode step: the call right before it."""
    calls = [c for c in runner.calls if c[0] != "flush"]
    kind_of_slot: dict[int, str] = {}
    before = []
    for i, (method, slot) in enumerate(calls):
        if method in ("launch_prefill", "launch_decode"):
            kind_of_slot[slot] = method
        elif method == "launch_sampling" and kind_of_slot[slot] == "launch_decode":
            before.append(calls[i - 1][0])
    return before


def test_lagging_specs_are_sampled_after_the_previous_commit_at_depth_2() -> None:
    h = Harness(depth=2)
    h.submit("a", max_outputs=12, lagging=True, min_outputs=12)
    h.run_until_idle()
    assert h.output.tokens("a") == output_stream((1, 2), "img", 12)
    # launch t+1 -> commit t (read) -> sample t+1: the spec needed output t
    assert set(_decode_sampling_neighbours(h.runner)) == {"read_outputs"}
    h.assert_drained()


@pytest.mark.parametrize("lagging", [False, True])
def test_every_spec_is_known_at_launch_at_depth_1(lagging: bool) -> None:
    h = Harness(depth=1)
    h.submit("a", max_outputs=12, lagging=lagging, min_outputs=12)
    h.run_until_idle()
    assert h.output.tokens("a") == output_stream((1, 2), "img", 12)
    assert set(_decode_sampling_neighbours(h.runner)) == {"launch_decode"}  # sampled ahead
    h.assert_drained()


def test_plain_specs_are_sampled_ahead_at_launch_at_depth_2() -> None:
    h = Harness(depth=2)
    h.submit("a", max_outputs=10, min_outputs=10)
    h.run_until_idle()
    assert set(_decode_sampling_neighbours(h.runner)) == {"launch_decode"}


def test_prefill_takes_at_most_four_and_one_new_image_per_step() -> None:
    h = Harness(max_batch_size=8, num_pages=200)
    for i in range(6):
        h.submit(f"same{i}", max_outputs=4, min_outputs=4, image="one")
    for i in range(3):
        h.submit(f"new{i}", max_outputs=4, min_outputs=4, image=f"img{i}")
    h.run_until_idle()
    # "one" is new: the first prefill takes the 4 requests sharing it; then the other 2
    # (cached now) and the first new image; then one step per new image.
    assert h.runner.prefill_sizes == [4, 3, 1, 1]
    h.assert_drained()


def test_prefills_and_decodes_alternate_while_both_wait() -> None:
    h = Harness(max_batch_size=8, num_pages=200)
    h.submit("first", max_outputs=30, min_outputs=30)
    for _ in range(3):
        h.tick()
    for i in range(3):
        h.submit(f"late{i}", max_outputs=5, min_outputs=5, image=f"i{i}")
    h.run_until_idle()
    kinds = [c[0] for c in h.runner.calls if c[0] in ("launch_prefill", "launch_decode")]
    first_late = kinds.index("launch_prefill", 1)
    window = kinds[first_late: first_late + 6]
    assert window == ["launch_prefill", "launch_decode"] * 3, kinds
    h.assert_drained()


@pytest.mark.parametrize("depth", [1, 2])
def test_running_requests_share_decode_steps(depth: int) -> None:
    h = Harness(depth=depth, max_batch_size=4)
    for i in range(4):
        h.submit(f"r{i}", max_outputs=20, min_outputs=20, image="same")
    h.run_until_idle()
    assert h.runner.prefill_sizes == [4] and max(h.runner.decode_sizes) == 4
    assert sum(h.runner.decode_sizes) == 4 * 19
    h.assert_drained()


def test_admission_is_fifo_and_never_overcommits_pages() -> None:
    # 12 positions per request -> 3 pages of 4; 7 free pages: two at a time.
    h = Harness(max_batch_size=8, num_pages=8)
    seqs = [h.submit(f"r{i}", max_outputs=4, min_outputs=4, prompt=(1,)) for i in range(5)]
    most = 0
    admitted_order: list[str] = []
    for _ in range(500):
        h.tick()
        holding = [s for s in seqs if s.state in (SeqState.ADMITTED, SeqState.RUNNING, SeqState.FINISHED)]
        most = max(most, len(holding))
        assert h.table.allocator.num_held == 3 * len(holding)
        admitted_order += [s.request_id for s in holding if s.request_id not in admitted_order]
        if len(h.output.finals) == 5:
            break
    assert most == 2 and admitted_order == [f"r{i}" for i in range(5)]
    h.assert_drained()


def test_abort_in_every_phase_ends_each_request_once() -> None:
    h = Harness(max_batch_size=2, num_pages=64)
    running = h.submit("running", max_outputs=50, min_outputs=50)
    h.submit("other", max_outputs=50, min_outputs=50, image="b")
    waiting = h.submit("waiting", max_outputs=5, min_outputs=5)  # no seq row free: waits
    for _ in range(6):
        h.tick()
    assert running.state is SeqState.RUNNING and waiting.state is SeqState.WAITING
    h.abort("waiting")
    h.abort("running")
    h.tick()
    assert h.output.finals["waiting"].finish_reason == FinishReason.CANCELLED
    assert h.output.finals["waiting"].num_output_tokens == 0
    assert h.output.finals["running"].finish_reason == FinishReason.CANCELLED
    got = h.output.tokens("running")
    assert got == output_stream((1, 2), "img", len(got))  # a prefix of its stream
    h.abort("running")  # after the end: nothing happens
    h.abort("nobody")
    h.run_until_idle()
    assert h.output.finals["other"].num_output_tokens == 50
    h.assert_drained()


def test_abort_of_an_admitted_request_before_its_prefill() -> None:
    h = Harness(max_batch_size=4)
    h.submit("a", max_outputs=5, min_outputs=5)
    h.tick()  # a's prefill
    b = h.submit("b", max_outputs=5, min_outputs=5, image="other")
    c = h.submit("c", max_outputs=5, min_outputs=5, image="third")
    h.tick()  # b, c admitted; a decode step goes first (prefill and decode alternate)
    assert b.state is SeqState.ADMITTED and c.state is SeqState.ADMITTED
    h.abort("b")
    h.run_until_idle()
    assert h.output.finals["b"].finish_reason == FinishReason.CANCELLED
    assert h.output.finals["b"].num_output_tokens == 0
    assert h.runner.prefill_sizes == [1, 1]  # a, then c: b never reached the device
    assert h.output.tokens("c") == output_stream((1, 2), "third", 5)
    h.assert_drained()


def test_a_failed_step_fails_only_its_requests() -> None:
    runner = FakeRunner(fail_launches=[3])
    h = Harness(runner=runner, max_batch_size=2)
    h.submit("a", max_outputs=20, min_outputs=20)
    h.submit("b", max_outputs=20, min_outputs=20, image="b")
    h.submit("queued", max_outputs=6, min_outputs=6, image="c")
    h.run_until_idle()
    failed = sorted(rid for rid, ev in h.output.finals.items() if ev.error is not None)
    # launches: 0 prefill a, 1 decode a, 2 prefill b, 3 decode a+b (fails), ...
    assert failed == ["a", "b"]
    for rid in failed:
        error = h.output.error(rid)
        assert isinstance(error, RequestFailed) and "injected fault in launch 3" in str(error)
    assert h.output.tokens("queued") == output_stream((1, 2), "c", 6)
    h.assert_drained()


def test_device_loss_escapes_the_tick_and_fail_all_ends_everyone_once() -> None:
    h = Harness(runner=FakeRunner(lose_at=4))
    h.submit("a", max_outputs=30, min_outputs=30)
    h.submit("b", max_outputs=30, min_outputs=30, image="b")
    with pytest.raises(DeviceLost):
        for _ in range(100):
            h.tick(check=False)
    h.submit("late", max_outputs=3)  # still in the inbox
    h.scheduler.fail_all(EngineStopped("UNAVAILABLE: the scheduler thread crashed"), crashed=True)
    assert set(h.output.finals) == {"a", "b", "late"}
    assert all(isinstance(h.output.error(rid), EngineStopped) for rid in ("a", "b", "late"))
    assert sorted(h.ended) == ["a", "b", "late"]


def test_a_crashed_scheduler_keeps_earlier_finals_and_reports_the_rest_once() -> None:
    h = Harness(runner=FakeRunner(crash_at=2))
    h.submit("a", max_outputs=1)  # ends at its prefill's output, committed before the crash
    h.submit("b", max_outputs=10, min_outputs=10, image="b")
    with pytest.raises(InjectedCrash):
        for _ in range(100):
            h.tick(check=False)
    h.scheduler.fail_all(EngineStopped("UNAVAILABLE: crashed"), crashed=True)
    assert h.output.finals["a"].finish_reason == FinishReason.LENGTH
    assert isinstance(h.output.error("b"), EngineStopped)
    assert sorted(h.ended) == ["a", "b"]


@pytest.mark.parametrize("depth", [1, 2])
def test_stop_drains_in_flight_steps_and_ends_every_request(depth: int) -> None:
    h = Harness(depth=depth, max_batch_size=2)
    for i in range(4):
        h.submit(f"r{i}", max_outputs=40, min_outputs=40, image=f"i{i}", lagging=i % 2 == 1)
    for _ in range(5):
        h.tick()
    h.scheduler.inbox.put(Command("stop"))
    h.submit("after-stop", max_outputs=3)
    assert h.tick() is False
    assert set(h.output.finals) == {"r0", "r1", "r2", "r3", "after-stop"}
    for rid, ev in h.output.finals.items():
        assert isinstance(ev.error, EngineStopped), rid
    h.assert_drained()


WORKLOAD = st.lists(
    st.tuples(
        st.integers(0, 30),  # tick of arrival
        st.integers(1, 25),  # max_outputs
        st.integers(0, 3),  # image
        st.booleans(),  # lagging specs
        st.one_of(st.none(), st.integers(0, 60)),  # tick of an abort
    ),
    min_size=1, max_size=12,
)


def _run(workload: list[tuple[int, int, int, bool, int | None]], depth: int, fail: list[int],
         max_batch: int, num_pages: int, prefix_cache_size: int = 0) -> Harness:
    h = Harness(depth=depth, max_batch_size=max_batch, num_pages=num_pages, runner=FakeRunner(fail_launches=fail),
                prefix_cache_size=prefix_cache_size)
    events: dict[int, list[tuple[int, bool]]] = {}  # tick -> (request index, is an abort)
    for i, (arrive, _, _, _, abort_at) in enumerate(workload):
        events.setdefault(arrive, []).append((i, False))
        if abort_at is not None:
            events.setdefault(arrive + abort_at, []).append((i, True))
    last = max(events)
    for tick in range(last + 2000):
        for i, abort in events.get(tick, []):
            if abort:
                h.abort(f"r{i}")
            else:
                _, n, image, lagging, _ = workload[i]
                h.submit(f"r{i}", max_outputs=n, image=f"i{image}", prompt=(image, n), lagging=lagging)
        h.tick()
        if tick > last and h.scheduler.pipeline.num_inflight == 0 and h.table.is_idle:
            break
    return h


@given(workload=WORKLOAD, fail=st.lists(st.integers(0, 40), max_size=2), max_batch=st.integers(1, 4),
       num_pages=st.integers(12, 60))
@settings(max_examples=60, deadline=None)
def test_random_workloads_keep_every_invariant_at_both_depths(
        workload: list[tuple[int, int, int, bool, int | None]], fail: list[int], max_batch: int,
        num_pages: int) -> None:
    runs = {depth: _run(workload, depth, fail, max_batch, num_pages) for depth in (1, 2)}
    for depth, h in runs.items():
        assert len(h.output.finals) == len(workload), depth  # every request ended, once
        assert sorted(h.ended) == sorted(h.output.finals)
        h.assert_drained()
        for i, (_, n, image, _, _) in enumerate(workload):
            rid, ev = f"r{i}", h.output.finals[f"r{i}"]
            got = list(ev.all_token_ids)
            if ev.error is not None:
                assert fail, "an error without an injected fault"
            elif ev.finish_reason == FinishReason.CANCELLED:
                assert got == output_stream((image, n), f"i{image}", n)[: len(got)], (depth, rid)
            else:  # stop or length: exactly the reference, whatever ran beside it
                assert got == reference((image, n), f"i{image}", n), (depth, rid)
