"""A model-free ``StepRunner`` and the pieces to drive a ``Scheduler`` with it, one tick at a time.

``FakeRunner`` keeps the runner's contract and checks it (a slot is launched, sampled,
read, in that order; a row's next forward only after its previous step was sampled) and
"samples" deterministic values: a per-seq-row pseudo-random stream seeded at prefill from
the prompt, so a request's k-th output depends only on the request and k, whatever the
batch, the depth or the timing. Faults are scripted by launch number.

It also models the paged KV cache: every forward writes a tag per position into its
sequence's pages (image prefix, prompt, outputs) and first checks that every position it
attends to holds its own sequence's tags, so a shared prefix page that someone
overwrote, a missed boundary-page copy or a page reused too early fails the test.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import numpy as np

from moonpipe.config import EngineConfig, KVLayout
from moonpipe.errors import DeviceLost, EngineError
from moonpipe.output import OutputEvent
from moonpipe.request import FinishReason, Request, Timings
from moonpipe.runtime.image_lru import ImageLRU
from moonpipe.scheduler.scheduler import Command, Scheduler
from moonpipe.scheduler.sequence import Sequence
from moonpipe.scheduler.sequences import SequenceTable
from moonpipe.skills.base import Advance
from moonpipe.step import NUM_SLOTS, PrefillItem, SamplingPlan, StepOutput, StepSpec
from moonpipe.telemetry import Telemetry
from moonpipe.testing import InjectedCrash

VOCAB = 100
STOP_EVERY = 13  # a token divisible by this ends a "stop" constraint
PREFIX = 5  # KV positions of the fake image prefix
PAGE_SIZE = 4  # the prefix ends inside a page; FakeRunner(page_size=PREFIX) tests the aligned case


def output_stream(prompt_ids: Seq[int], image_key: str, n: int) -> list[int]:
    """The first ``n`` tokens any run samples for a request (the reference)."""
    state = _seed(prompt_ids, image_key)
    out = []
    for _ in range(n):
        state = _next(state)
        out.append(state % VOCAB)
    return out


def _seed(prompt_ids: Seq[int], image_key: str) -> int:
    digest = hashlib.blake2b(repr((tuple(prompt_ids), image_key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def _next(state: int) -> int:
    return (state * 1103515245 + 12345) % 2**31


@dataclass
class _SlotUse:
    rows: list[int]  # seq rows of the step
    launch_no: int
    sampled: bool = False
    outputs: list[StepOutput] = field(default_factory=list)


class FakeRunner:
    """``StepRunner`` without a model (see module docstring).

    ``fail_launches``: launch numbers (0-based, prefill and decode) whose ``read_outputs``
    raises ``RuntimeError`` (that step's requests fail); ``lose_at``: from that launch on,
    ``read_outputs`` raises ``DeviceLost``; ``crash_at``: that launch's read raises
    ``InjectedCrash`` (kills a scheduler thread).
    """

    def __init__(self, *, image_cache_size: int = 4, fail_launches: Seq[int] = (),
                 lose_at: int | None = None, crash_at: int | None = None, page_size: int = PAGE_SIZE) -> None:
        self.page_size = page_size
        self.fail_launches = set(fail_launches)
        self.lose_at = lose_at
        self.crash_at = crash_at
        self.calls: list[tuple[str, int]] = []  # (method, slot) in call order
        self.launches = 0
        self.prefill_sizes: list[int] = []
        self.decode_sizes: list[int] = []
        self._slots: dict[int, _SlotUse] = {}
        self._state: dict[int, int] = {}  # seq row -> its stream's state ("device memory")
        self._unsampled_rows: set[int] = set()
        self._pages: dict[int, tuple[int, ...]] = {}  # seq row -> pages of its last prefill
        self._who: dict[int, tuple[str, tuple[int, ...], int]] = {}  # seq row -> (image, prompt, uid)
        self.kv: dict[tuple[int, int], tuple[object, ...]] = {}  # (page, offset) -> tag
        self._tainted: set[int] = set()  # rows in a failing step: their outputs are never used
        self.cached_prefills = 0
        self._images: ImageLRU[None] = ImageLRU(image_cache_size)

    # ------------------------------------------------------------ StepRunner
    def has_image(self, key: str) -> bool:
        return key in self._images

    def launch_prefill(self, slot: int, items: Seq[PrefillItem]) -> None:
        rows = [it.seq_row for it in items]
        busy_rows = {r for use in self._slots.values() for r in use.rows}
        busy_pages = {p for r in busy_rows for p in self._pages.get(r, ())}
        for it in items:  # a released sequence's row and pages are reused only once no step holds them
            assert it.seq_row not in busy_rows, f"seq row {it.seq_row} reused while a launched step holds it"
            private = it.page_ids[PREFIX // self.page_size:] if it.cached_prefix else it.page_ids
            assert not busy_pages.intersection(private), "pages reused while a launched step holds them"
        self._tainted.difference_update(rows)  # new sequences in these rows
        self._launch("launch_prefill", slot, rows)
        for it in items:
            assert it.page_ids and len(set(it.page_ids)) == len(it.page_ids) and 0 not in it.page_ids
            self._pages[it.seq_row] = it.page_ids
            self._who[it.seq_row] = (it.image_key, it.prompt_ids, self.launches * 1000 + it.seq_row)
            if it.cached_prefix:
                self.cached_prefills += 1
                assert bool(it.boundary_src) == bool(PREFIX % self.page_size), "a boundary copy iff the prefix ends inside a page"
                if it.boundary_src:
                    assert it.boundary_dst == it.page_ids[PREFIX // self.page_size]
                    for off in range(self.page_size):
                        self._put(it.boundary_dst, off, self.kv.get((it.boundary_src, off), ("never written",)))
                self._check(it.seq_row, PREFIX)  # the shared prefix is this image's
            else:
                for pos in range(PREFIX):
                    self._write(it.seq_row, pos)
            for pos in range(PREFIX, PREFIX + len(it.prompt_ids)):
                self._write(it.seq_row, pos)
            self._state[it.seq_row] = _seed(it.prompt_ids, it.image_key)
            if not it.cached_prefix:  # a cached prefix needs no image embedding
                self._images.put(it.image_key, None)
        self.prefill_sizes.append(len(items))

    def launch_decode(self, slot: int, seq_rows: np.ndarray, positions: np.ndarray,
                      page_rows: np.ndarray) -> None:
        rows = seq_rows.tolist()
        assert page_rows.shape == (len(rows), page_rows.shape[1])
        for r, pos, pages in zip(rows, positions.tolist(), page_rows):
            assert r in self._state, f"decode of seq row {r} before its prefill"
            assert pages[pos // self.page_size] in self._pages[r], f"row {r} writes position {pos} outside its pages"
        self._launch("launch_decode", slot, rows)
        for r, pos in zip(rows, positions.tolist()):
            self._check(r, pos)
            self._write(r, pos)
        self.decode_sizes.append(len(rows))

    def launch_sampling(self, slot: int, plan: SamplingPlan) -> None:
        self.calls.append(("launch_sampling", slot))
        use = self._slots.get(slot)
        assert use is not None and not use.sampled, f"sampling of slot {slot} without a launched step"
        assert len(plan.temperature) == len(use.rows)
        use.sampled = True
        for r in use.rows:
            self._state[r] = _next(self._state[r])
            use.outputs.append(StepOutput(self._state[r] % VOCAB))
            self._unsampled_rows.discard(r)

    def flush(self) -> None:
        self.calls.append(("flush", -1))

    def read_outputs(self, slot: int) -> list[StepOutput]:
        self.calls.append(("read_outputs", slot))
        use = self._slots.pop(slot, None)
        assert use is not None and use.sampled, f"read of slot {slot} before its step was sampled"
        if self.lose_at is not None and use.launch_no >= self.lose_at:
            raise DeviceLost("the fake device is gone")
        if use.launch_no == self.crash_at:
            raise InjectedCrash("injected scheduler crash")
        if use.launch_no in self.fail_launches:
            raise RuntimeError(f"injected fault in launch {use.launch_no}")
        return use.outputs

    def step_times_ms(self, slot: int) -> tuple[float, float]:
        return 1.0, 0.1

    # ------------------------------------------------------------ the KV model
    def _tag(self, row: int, pos: int) -> tuple[object, ...]:
        image, prompt, uid = self._who[row]
        if pos < PREFIX:
            return ("image", image, pos)
        if pos < PREFIX + len(prompt):
            return ("prompt", uid, pos)
        return ("output", uid, pos)

    def _put(self, page: int, offset: int, tag: tuple[object, ...]) -> None:
        assert page != 0 or tag == ("never written",), "a real position written to the scratch page"
        self.kv[(page, offset)] = tag

    def _write(self, row: int, pos: int) -> None:
        """The forward's KV write; a step scripted to fail writes garbage instead."""
        pages = self._pages[row]
        failing = self.launches - 1 in self.fail_launches
        self._put(pages[pos // self.page_size], pos % self.page_size, ("garbage",) if failing else self._tag(row, pos))

    def _check(self, row: int, upto: int) -> None:
        """Positions ``[0, upto)`` of ``row`` hold what its own forwards (or, for a shared
        prefix, its image's) wrote. Rows of a failed step are not checked: that step's
        requests fail, and later steps that still carry them are discarded."""
        if row in self._tainted:
            return
        pages = self._pages[row]
        for pos in range(upto):
            got = self.kv.get((pages[pos // self.page_size], pos % self.page_size))
            assert got == self._tag(row, pos), f"row {row} position {pos}: {got} != {self._tag(row, pos)}"

    # ------------------------------------------------------------ checks
    def _launch(self, method: str, slot: int, rows: list[int]) -> None:
        self.calls.append((method, slot))
        assert 0 <= slot < NUM_SLOTS and slot not in self._slots, f"slot {slot} reused before its read"
        assert len(set(rows)) == len(rows), "a seq row twice in one step"
        late = self._unsampled_rows.intersection(rows)
        assert not late, f"rows {late} launched before their previous step was sampled"
        self._unsampled_rows.update(rows)
        self._slots[slot] = _SlotUse(rows, self.launches)
        if self.launches in self.fail_launches:
            self._tainted.update(rows)
        self.launches += 1


class StopConstraint:
    """Ends with "stop" at a token divisible by ``STOP_EVERY`` (after ``min_outputs``).

    ``lagging``: the spec of output ``k`` is known only after output ``k - 1`` was
    advanced (as segment's path grammar), so sampling cannot run ahead at launch.
    """

    def __init__(self, prompt_ids: list[int], *, lagging: bool = False, min_outputs: int = 0) -> None:
        self._prompt_ids = prompt_ids
        self.lagging = lagging
        self.min_outputs = min_outputs
        self.seen: list[int] = []

    @property
    def prompt_ids(self) -> list[int]:
        return self._prompt_ids

    def spec(self, k: int) -> StepSpec | None:
        if self.lagging and k > len(self.seen):
            return None
        return StepSpec()

    def advance(self, output: StepOutput) -> Advance:
        self.seen.append(output.token)
        done = output.token % STOP_EVERY == 0 and len(self.seen) > self.min_outputs
        return Advance(token_ids=[output.token], finish_reason=FinishReason.STOP if done else None)


class CollectOutput:
    """The scheduler's output port: records every event; checks one final per request."""

    def __init__(self) -> None:
        self.events: list[OutputEvent] = []
        self.finals: dict[str, OutputEvent] = {}

    def put(self, events: list[OutputEvent]) -> None:
        for ev in events:
            rid = ev.request.request_id
            assert rid not in self.finals, f"{rid}: an event after its final"
            self.events.append(ev)
            if ev.final:
                self.finals[rid] = ev

    def tokens(self, rid: str) -> list[int]:
        return list(self.finals[rid].all_token_ids)

    def error(self, rid: str) -> EngineError | None:
        return self.finals[rid].error


class Harness:
    """A scheduler over a ``FakeRunner``, driven one tick at a time from the test thread."""

    def __init__(self, *, depth: int = 2, max_batch_size: int = 4, num_pages: int = 64,
                 runner: FakeRunner | None = None, prefix_cache_size: int = 0) -> None:
        self.runner = runner or FakeRunner()
        page_size = self.runner.page_size
        self.config = EngineConfig(max_batch_size=max_batch_size, pipeline_depth=depth, kv_page_size=page_size,
                                   num_kv_pages=num_pages, prefix_cache_size=prefix_cache_size)
        self.layout = KVLayout(page_size=page_size, num_pages=num_pages, max_pages_per_seq=64, prefix_len=PREFIX)
        self.output = CollectOutput()
        self.ended: list[str] = []
        self.scheduler = Scheduler(self.runner, self.output, Telemetry(), self.config, self.layout,
                                   on_final=self.ended.append)
        self._ids = 0

    @property
    def table(self) -> SequenceTable:
        return self.scheduler.table

    def submit(self, rid: str, *, max_outputs: int = 8, prompt: tuple[int, ...] = (1, 2), image: str = "img",
               lagging: bool = False, min_outputs: int = 0, stream: bool = False) -> Sequence:
        request = Request(rid, "caption", b"x", stream=stream)
        num_prompt = PREFIX + len(prompt)
        seq = Sequence(
            seq_id=self._ids, request=request, sink=_NO_SINK, prompt_ids=prompt,
            constraint=StopConstraint(list(prompt), lagging=lagging, min_outputs=min_outputs),
            crops=None, tiling=(1, 1), image_key=image, image=b"x", temperature=0.0, top_p=1.0,
            num_prompt_tokens=num_prompt, max_outputs=max_outputs,
            num_positions=num_prompt + max_outputs + 1, timings=Timings(submitted=time.perf_counter()),
        )
        self._ids += 1
        self.scheduler.inbox.put(Command("submit", seq=seq))
        return seq

    def abort(self, rid: str) -> None:
        self.scheduler.inbox.put(Command("abort", request_id=rid))

    def tick(self, check: bool = True) -> bool:
        alive = self.scheduler.run_once(block=False)
        if check:
            self.table.check()
        return alive

    def run_until_idle(self, max_ticks: int = 10_000) -> None:
        for _ in range(max_ticks):
            self.tick()
            if self.scheduler.pipeline.num_inflight == 0 and self.table.is_idle and self.scheduler.inbox.empty():
                return
        raise AssertionError("the scheduler did not become idle")

    def assert_drained(self) -> None:
        """Nothing in flight, no request left, and every page free once the cache is cleared."""
        assert self.scheduler.pipeline.num_inflight == 0
        assert not self.table.live(), [s.request_id for s in self.table.live()]
        assert self.table.allocator.num_seq_pages == 0
        self.table.check()
        self.table.prefix_cache.clear()
        assert self.table.allocator.num_held == 0
        self.table.check()


class _NoSink:
    """Sequences need a sink; the scheduler only hands it to the output port."""

    def on_delta(self, request_id: str, delta: object) -> None: ...

    def on_result(self, request_id: str, result: object) -> None: ...

    def on_error(self, request_id: str, error: object) -> None: ...


_NO_SINK = _NoSink()
