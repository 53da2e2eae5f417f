"""The scheduler: one thread that owns every mutable engine structure.

Each tick (depth 2)::

    admit waiting requests (pages + seq slot, never over-committing the KV pool)
    plan + launch step t+1 (prefill or decode) into the free slot     (never blocks)
      - sample it ahead when every row's spec is already known (plain text)
    commit step t: wait its host copy, advance each request's constraint, emit outputs
    finalize step t+1: build specs/masks (constraints now saw output t), launch sampling

Depth 1 runs launch -> finalize -> commit in series: the blocking baseline, same code.
The scheduler knows nothing about skills: it drives ``Constraint`` objects.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moonpipe.errors import EngineError, EngineStopped, RequestFailed
from moonpipe.output import OutputEvent, OutputProcessor
from moonpipe.request import Box, FinishReason, Point
from moonpipe.runtime.kv_cache import pages_needed
from moonpipe.runtime.runner import ModelRunner, PrefillItem
from moonpipe.runtime.streams import DeviceLost
from moonpipe.scheduler.pipeline import InFlightStep, Pipeline
from moonpipe.scheduler.sampling_plan import plan_sampling
from moonpipe.scheduler.sequence import SeqState, Sequence
from moonpipe.skills.base import Feed, StepOutput, StepSpec
from moonpipe.telemetry import Telemetry

__all__ = ["Command", "Scheduler"]

log = logging.getLogger("moonpipe.scheduler")

MAX_PREFILL_PER_STEP = 4
_ZOMBIE_SPEC = StepSpec(feed=Feed.TOKEN, greedy=True)


@dataclass(frozen=True, slots=True)
class Command:
    """A message to the scheduler thread: ``submit`` (seq), ``abort`` (request id), ``stop``."""

    kind: str
    seq: Sequence | None = None
    request_id: str = ""


@dataclass(slots=True)
class _StepInfo:
    seqs: list[Sequence]
    ks: list[int]  # output index of each row
    prefill: bool


class Scheduler:
    """The tick and the request lifecycle (see module docstring)."""

    def __init__(self, runner: ModelRunner, output: OutputProcessor, telemetry: Telemetry,
                 depth: int, on_final: Callable[[str], None]) -> None:
        self.runner = runner
        self.output = output
        self.telemetry = telemetry
        self.depth = depth
        self.pipeline: Pipeline[int] = Pipeline(depth=depth)
        self.allocator = runner.kv.allocator
        self.inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.waiting: deque[Sequence] = deque()
        self.admitted: list[Sequence] = []
        self.running: dict[int, Sequence] = {}
        self.seqs: dict[int, Sequence] = {}
        self.by_request: dict[str, Sequence] = {}
        self.free_seq_slots: list[int] = list(range(runner.max_seqs - 1, -1, -1))
        self.page_rows = np.zeros((runner.max_seqs + 1, runner.kv.max_pages_per_seq), dtype=np.int64)
        self._steps: dict[int, _StepInfo] = {}
        self._last_prefill = False
        self._recent_images: OrderedDict[str, None] = OrderedDict()  # mirrors the runner's cache
        self._on_final = on_final
        self.stopping = False

    # ---------------------------------------------------------------- the loop
    def run(self) -> None:
        """Thread body: returns after a ``stop`` command has drained everything."""
        while True:
            idle = (self.pipeline.num_inflight == 0 and not self.running and not self.admitted
                    and not self.waiting)
            self._drain_inbox(block=idle)
            if self.stopping:
                self._stop_all()
                return
            self.tick()

    def _drain_inbox(self, block: bool) -> None:
        try:
            cmd = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        if block:
            self.telemetry.idle_gap()
        while True:
            self._handle(cmd)
            try:
                cmd = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, cmd: Command) -> None:
        if cmd.kind == "submit" and cmd.seq is not None:
            seq = cmd.seq
            self.seqs[seq.seq_id] = seq
            self.by_request[seq.request_id] = seq
            self.waiting.append(seq)
        elif cmd.kind == "abort":
            self._abort(cmd.request_id)
        elif cmd.kind == "stop":
            self.stopping = True

    def tick(self) -> None:
        self._admit()
        step = self._plan_and_launch()
        self.runner.flush()  # the launch (+ sampling ahead) reaches the device as one batch
        if self.depth == 1:
            if step is not None:
                if not step.finalized:
                    self._finalize(step)
                self._commit_oldest()
            return
        if self.pipeline.num_inflight == 2 or (step is None and self.pipeline.num_inflight):
            self._commit_oldest()
        newest = self.pipeline.newest
        if newest is not None and not newest.finalized:
            self._finalize(newest)

    # --------------------------------------------------------------- admission
    def _admit(self) -> None:
        now = time.perf_counter()
        while self.waiting and self.free_seq_slots:
            seq = self.waiting[0]
            n = pages_needed(seq.num_positions, self.runner.page_size)
            if not self.allocator.can_allocate(n):
                return  # FIFO: the head waits for pages; submit() rejected what can never fit
            self.waiting.popleft()
            seq.page_ids = tuple(self.allocator.allocate(n, owner=str(seq.seq_id)))
            seq.seq_slot = self.free_seq_slots.pop()
            row = self.page_rows[seq.seq_slot]
            row[:] = 0
            row[:n] = seq.page_ids
            seq.state = SeqState.ADMITTED
            seq.timings.admitted = now
            self.admitted.append(seq)

    # ------------------------------------------------------------------ launch
    def _plan_and_launch(self) -> InFlightStep[int] | None:
        if not self.pipeline.can_launch():
            return None
        decode = [s for s in self.running.values() if s.num_launched < s.max_outputs]
        if self.admitted and (not decode or not self._last_prefill):
            n = self._prefill_batch_size()
            batch, self.admitted = self.admitted[:n], self.admitted[n:]
            self._last_prefill = True
            return self._launch_prefill(batch)
        if decode:
            self._last_prefill = False
            return self._launch_decode(decode)
        return None

    def _prefill_batch_size(self) -> int:
        """How many admitted sequences (FIFO) the next prefill takes: up to
        ``MAX_PREFILL_PER_STEP``, but at most one image not encoded recently. Encoding an
        image dominates a prefill; one per step keeps decode steps flowing between them
        instead of making every request of a burst wait for the whole burst's images."""
        new: set[str] = set()
        n = 0
        for s in self.admitted[:MAX_PREFILL_PER_STEP]:
            if s.image_key not in self._recent_images and s.image_key not in new:
                if new:
                    break
                new.add(s.image_key)
            n += 1
        for key in (s.image_key for s in self.admitted[:n]):
            self._recent_images[key] = None
            self._recent_images.move_to_end(key)
        while len(self._recent_images) > self.runner.cfg.image_cache_size:
            self._recent_images.popitem(last=False)
        return max(n, 1)

    def _launch_prefill(self, seqs: list[Sequence]) -> InFlightStep[int]:
        step = self.pipeline.launch(s.seq_id for s in seqs)
        slot = self.runner.slots[step.slot]
        items = [
            PrefillItem(seq_slot=s.seq_slot, image_key=s.image_key, crops=s.crops, tiling=s.tiling,
                        image=s.image, prompt_ids=s.prompt_ids, page_ids=s.page_ids)
            for s in seqs
        ]
        for s in seqs:
            s.state = SeqState.RUNNING
            s.position = s.num_prompt_tokens
            s.num_launched = 1
            self.running[s.seq_id] = s
        self._steps[step.step_id] = _StepInfo(seqs=seqs, ks=[0] * len(seqs), prefill=True)
        self.runner.stage_prefill(slot, items)
        self.runner.launch_prefill(slot, items)
        self._sample(step, ahead=True)
        return step

    def _launch_decode(self, seqs: list[Sequence]) -> InFlightStep[int]:
        step = self.pipeline.launch(s.seq_id for s in seqs)
        slot = self.runner.slots[step.slot]
        seq_slots = np.fromiter((s.seq_slot for s in seqs), dtype=np.int64, count=len(seqs))
        positions = np.fromiter((s.position for s in seqs), dtype=np.int64, count=len(seqs))
        ks = [s.num_launched for s in seqs]
        for s in seqs:
            s.position += 1
            s.num_launched += 1
        self._steps[step.step_id] = _StepInfo(seqs=seqs, ks=ks, prefill=False)
        self.runner.stage_decode(slot, seq_slots, positions, self.page_rows[seq_slots])
        self.runner.launch_decode(slot)
        self._sample(step, ahead=True)
        return step

    # ---------------------------------------------------------------- finalize
    def _finalize(self, step: InFlightStep[int]) -> None:
        self._sample(step, ahead=False)
        self.runner.flush()

    def _sample(self, step: InFlightStep[int], ahead: bool) -> None:
        """Build every row's spec and enqueue sampling. With ``ahead`` it gives up (and
        leaves the step for finalize) if a spec depends on an uncommitted output."""
        info = self._steps[step.step_id]
        specs: list[StepSpec] = []
        for s, k in zip(info.seqs, info.ks):
            if s.finished:
                specs.append(_ZOMBIE_SPEC)
                continue
            spec = s.constraint.spec(k)
            if spec is None:
                if ahead:
                    return
                raise RuntimeError(f"constraint of {s.request_id} has no spec for output {k} after commit")
            specs.append(spec)
        plan = plan_sampling(specs, [s.temperature for s in info.seqs], [s.top_p for s in info.seqs])
        slot = self.runner.slots[step.slot]
        self.runner.stage_sampling(slot, plan.temperature, plan.top_p, plan.greedy, plan.mask_ids,
                                   plan.banned, plan.banned_valid, plan.feed)
        self.runner.launch_sampling(slot, plan.flags)
        self.pipeline.mark_finalized(step)

    # ------------------------------------------------------------------ commit
    def _commit_oldest(self) -> None:
        step = self.pipeline.oldest
        assert step is not None
        info = self._steps.pop(step.step_id)
        slot = self.runner.slots[step.slot]
        error: BaseException | None = None
        try:
            tokens, coords, sizes = self.runner.read_outputs(slot)
        except DeviceLost:
            raise  # no later step can run either: the engine stops (fail_all, not ready)
        except Exception as exc:  # a failed forward/sampling fails this step's requests only
            log.exception("step %d failed", step.step_id)
            error = exc
            tokens, coords, sizes = [], [], []
        now = time.perf_counter()
        events: list[OutputEvent] = []
        zombies = outputs = 0
        try:  # finals already decided must be delivered even if a later row raises
            for row, s in enumerate(info.seqs):
                if s.finished:
                    zombies += 1
                    continue
                if error is not None:
                    self._finish(s, FinishReason.ERROR, events,
                                 error=RequestFailed(f"INTERNAL: the engine failed on this step: {error}"))
                    continue
                size = sizes[row]
                adv = s.constraint.advance(StepOutput(tokens[row], coords[row], (size[0], size[1])))
                s.num_committed += 1
                outputs += 1
                if not s.timings.first_output:
                    s.timings.first_output = now
                s.timings.output_times.append(now)
                s.token_ids.extend(adv.token_ids)
                s.points.extend(adv.points)
                s.boxes.extend(adv.boxes)
                reason = adv.finish_reason
                if reason is None and s.num_committed >= s.max_outputs:
                    reason = FinishReason.LENGTH
                if reason is not None:
                    self._finish(s, reason, events, new_tokens=adv.token_ids, new_points=adv.points,
                                 new_boxes=adv.boxes)
                elif s.request.stream and (adv.token_ids or adv.points or adv.boxes):
                    events.append(OutputEvent(request=s.request, sink=s.sink, token_ids=adv.token_ids,
                                              points=adv.points, boxes=adv.boxes))
            _, released = self.pipeline.commit_oldest()
            for seq_id in released:
                self._release(self.seqs[seq_id])
        finally:
            self.output.put(events)
        fwd, samp = (0.0, 0.0) if error is not None else self.runner.step_times_ms(slot)
        self.telemetry.record_step(prefill=info.prefill, batch=len(info.seqs), zombies=zombies,
                                   forward_ms=fwd, sampling_ms=samp, now=now, outputs=outputs)

    # --------------------------------------------------------------- lifecycle
    def _finish(self, s: Sequence, reason: str, events: list[OutputEvent], *,
                error: EngineError | None = None, new_tokens: list[int] | None = None,
                new_points: list[Point] | None = None, new_boxes: list[Box] | None = None) -> None:
        """Emit the final output now (early); free resources when no step holds it (late)."""
        if s.finished:
            return
        s.state = SeqState.FINISHED
        s.finish_reason = reason
        self.running.pop(s.seq_id, None)
        if s in self.admitted:
            self.admitted.remove(s)
        if error is not None:
            events.append(OutputEvent(request=s.request, sink=s.sink, error=error, final=True))
        else:
            events.append(OutputEvent(
                request=s.request, sink=s.sink, token_ids=list(new_tokens or ()),
                points=list(new_points or ()), boxes=list(new_boxes or ()), final=True,
                finish_reason=reason, all_token_ids=s.token_ids, all_points=s.points,
                all_boxes=s.boxes, num_input_tokens=s.num_prompt_tokens,
                num_output_tokens=s.num_committed, timings=s.timings,
            ))
        self.telemetry.count_request(finished=1)
        self._on_final(s.request_id)
        if s.seq_slot < 0:  # never admitted: nothing to release
            self.seqs.pop(s.seq_id, None)
            self.by_request.pop(s.request_id, None)
            return
        if self.pipeline.finish(s.seq_id):
            self._release(s)

    def _release(self, s: Sequence) -> None:
        self.allocator.release(list(s.page_ids), owner=str(s.seq_id))
        self.page_rows[s.seq_slot] = 0
        self.free_seq_slots.append(s.seq_slot)
        self.pipeline.forget(s.seq_id)
        self.seqs.pop(s.seq_id, None)
        if self.by_request.get(s.request_id) is s:
            del self.by_request[s.request_id]

    def _abort(self, request_id: str) -> None:
        s = self.by_request.get(request_id)
        if s is None or s.finished:
            return
        events: list[OutputEvent] = []
        if s.state is SeqState.WAITING:
            self.waiting.remove(s)
        try:
            self._finish(s, FinishReason.CANCELLED, events)
        finally:
            self.output.put(events)

    def _stop_all(self) -> None:
        """Drain in-flight steps, then end every request with EngineStopped."""
        while self.pipeline.num_inflight:
            newest = self.pipeline.newest
            if newest is not None and not newest.finalized:
                self._finalize(newest)
            self._commit_oldest()
        self.fail_all(EngineStopped("UNAVAILABLE: the server is shutting down"))

    def fail_all(self, error: EngineError, *, crashed: bool = False) -> None:
        """End every unfinished request with ``error`` (shutdown, or a dead scheduler:
        then the pipeline may be inconsistent, so nothing is released, only reported)."""
        events: list[OutputEvent] = []
        for s in list(self.seqs.values()):
            if s.finished:
                continue
            if crashed:
                s.state = SeqState.FINISHED
                events.append(OutputEvent(request=s.request, sink=s.sink, error=error, final=True))
                self._on_final(s.request_id)
                continue
            if s.state is SeqState.WAITING and s in self.waiting:
                self.waiting.remove(s)
            self._finish(s, FinishReason.ERROR, events, error=error)
        while True:
            try:
                cmd = self.inbox.get_nowait()
            except queue.Empty:
                break
            if cmd.kind == "submit" and cmd.seq is not None:
                s = cmd.seq
                events.append(OutputEvent(request=s.request, sink=s.sink, error=error, final=True))
                self._on_final(s.request_id)
        self.output.put(events)

    # ------------------------------------------------------------------- stats
    def live_counts(self) -> dict[str, int]:
        """Racy reads of sizes only (ints/len), fine for metrics from other threads."""
        return {
            "queue_depth": len(self.waiting) + len(self.admitted),
            "running": len(self.running),
            "zombies": self.pipeline.num_zombies,
            "kv_pages_in_use": self.allocator.num_in_use,
            "kv_pages_total": self.allocator.capacity,
        }

