"""The scheduler: one thread that owns every mutable engine structure.

Each tick (depth 2)::

    admit waiting requests (pages + seq row, never over-committing the KV pool)
    launch step t+1 (prefill or decode) into the free slot            (never blocks)
      - sample it ahead when every row's spec is already known (plain text)
    commit step t: wait its outputs, advance each request's constraint, emit outputs
    sample step t+1 if it was not sampled ahead (its specs needed output t)

Depth 1 runs launch -> sample -> commit in series: the blocking baseline, same code.
The scheduler knows nothing about skills (it drives ``Constraint`` objects), nothing
about the device (it drives a ``StepRunner``, ``ports.py``) and delegates every
request's lifecycle to its ``SequenceTable``.
"""

from __future__ import annotations

import itertools
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moonpipe.config import EngineConfig, KVLayout
from moonpipe.errors import DeviceLost, EngineError, EngineStopped, RequestFailed
from moonpipe.output import OutputEvent
from moonpipe.request import FinishReason
from moonpipe.scheduler.pipeline import InFlightStep, Pipeline
from moonpipe.scheduler.ports import OutputPort, StepRunner
from moonpipe.scheduler.sampling_plan import plan_sampling
from moonpipe.scheduler.sequence import Sequence
from moonpipe.scheduler.sequences import SequenceTable
from moonpipe.skills.base import Advance
from moonpipe.step import Feed, PrefillItem, StepOutput, StepSpec
from moonpipe.telemetry import Telemetry

__all__ = ["Command", "Scheduler"]

log = logging.getLogger("moonpipe.scheduler")

MAX_PREFILL_PER_STEP = 4
_ZOMBIE_SPEC = StepSpec(feed=Feed.TOKEN, greedy=True)

Step = InFlightStep[Sequence]


@dataclass(frozen=True, slots=True)
class Command:
    """A message to the scheduler thread: ``submit`` (seq), ``abort`` (request id),
    ``clear_prefix_cache``, ``stop``."""

    kind: str
    seq: Sequence | None = None
    request_id: str = ""


class Scheduler:
    """The tick (see module docstring)."""

    def __init__(self, runner: StepRunner, output: OutputPort, telemetry: Telemetry,
                 config: EngineConfig, layout: KVLayout, on_final: Callable[[str], None]) -> None:
        self.runner = runner
        self.output = output
        self.telemetry = telemetry
        self.depth = config.pipeline_depth
        self.pipeline: Pipeline[Sequence] = Pipeline(depth=self.depth)
        self.table = SequenceTable(config.max_batch_size, layout, config.prefix_cache_size)
        self.inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._last_prefill = False
        self._on_final = on_final
        self.stopping = False

    # ---------------------------------------------------------------- the loop
    def run(self) -> None:
        """Thread body: returns after a ``stop`` command has drained everything."""
        while self.run_once(block=True):
            pass

    def run_once(self, block: bool = False) -> bool:
        """Take the inbox's commands, then one tick; False once a ``stop`` has drained
        everything. ``block``: wait (up to 0.5 s) for a command when there is nothing to do
        (tests drive the scheduler with ``block=False``, one tick at a time)."""
        self._drain_inbox(block=block and self.pipeline.num_inflight == 0 and self.table.is_idle)
        if self.stopping:
            self._stop_all()
            return False
        self.tick()
        return True

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
            self.table.add(cmd.seq)
        elif cmd.kind == "abort":
            self._abort(cmd.request_id)
        elif cmd.kind == "clear_prefix_cache":
            self.table.prefix_cache.clear()
        elif cmd.kind == "stop":
            self.stopping = True

    def tick(self) -> None:
        self.table.admit(time.perf_counter())
        step = self._launch_next()
        self.runner.flush()  # the launch (+ sampling ahead) reaches the device as one batch
        if self.depth == 1:
            if step is not None:
                if not step.sampled:
                    self._sample_after_commit(step)
                self._commit_oldest()
            return
        if self.pipeline.num_inflight == 2 or (step is None and self.pipeline.num_inflight):
            self._commit_oldest()
        newest = self.pipeline.newest
        if newest is not None and not newest.sampled:
            self._sample_after_commit(newest)

    # ------------------------------------------------------------------ launch
    def _launch_next(self) -> Step | None:
        if not self.pipeline.can_launch():
            return None
        decode = self.table.decodable()
        if self.table.admitted and (not decode or not self._last_prefill):
            self._last_prefill = True
            seqs = self.table.start_prefill(self._prefill_batch_size(), self.pipeline.next_step_id)
            return self._launch_prefill(seqs)
        if decode:
            self._last_prefill = False
            return self._launch_decode(decode)
        return None

    def _prefill_batch_size(self) -> int:
        """How many admitted sequences (FIFO) the next prefill takes: up to
        ``MAX_PREFILL_PER_STEP``, but at most one image the runner has not encoded
        recently (a cached prefix needs no image at all). Encoding an image dominates a
        prefill; one per step keeps decode steps flowing between them instead of making
        every request of a burst wait for the whole burst's images."""
        new: set[str] = set()
        n = 0
        for s in itertools.islice(self.table.admitted, MAX_PREFILL_PER_STEP):
            if not s.cached_prefix and s.image_key not in new and not self.runner.has_image(s.image_key):
                if new:
                    break
                new.add(s.image_key)
            n += 1
        return max(n, 1)

    def _launch_prefill(self, seqs: list[Sequence]) -> Step:
        step = self.pipeline.launch(seqs, [0] * len(seqs), prefill=True)
        items = [
            PrefillItem(seq_row=s.seq_row, image_key=s.image_key, crops=s.crops, tiling=s.tiling,
                        image=s.image, prompt_ids=s.prompt_ids, page_ids=s.page_ids,
                        cached_prefix=s.cached_prefix, boundary_src=s.boundary_src,
                        boundary_dst=self.table.boundary_dst(s))
            for s in seqs
        ]
        self.runner.launch_prefill(step.slot, items)
        self._sample(step, ahead=True)
        return step

    def _launch_decode(self, seqs: list[Sequence]) -> Step:
        step = self.pipeline.launch(seqs, [s.num_launched for s in seqs], prefill=False)
        seq_rows = np.fromiter((s.seq_row for s in seqs), dtype=np.int64, count=len(seqs))
        positions = np.fromiter((s.position for s in seqs), dtype=np.int64, count=len(seqs))
        for s in seqs:
            s.position += 1
            s.num_launched += 1
        self.runner.launch_decode(step.slot, seq_rows, positions, self.table.page_rows[seq_rows])
        self._sample(step, ahead=True)
        return step

    # ---------------------------------------------------------------- sampling
    def _sample_after_commit(self, step: Step) -> None:
        self._sample(step, ahead=False)
        self.runner.flush()

    def _sample(self, step: Step, ahead: bool) -> None:
        """Build every row's spec and enqueue sampling. With ``ahead`` it gives up (and
        leaves the step to be sampled after the next commit) if a spec depends on an
        uncommitted output."""
        specs: list[StepSpec] = []
        for s, k in zip(step.rows, step.output_index):
            if s.finished:
                specs.append(_ZOMBIE_SPEC)
                continue
            spec = s.constraint.spec(k)
            if spec is None:
                if ahead:
                    return
                raise RuntimeError(f"constraint of {s.request_id} has no spec for output {k} after commit")
            specs.append(spec)
        plan = plan_sampling(specs, [s.temperature for s in step.rows], [s.top_p for s in step.rows])
        self.runner.launch_sampling(step.slot, plan)
        self.pipeline.mark_sampled(step)

    # ------------------------------------------------------------------ commit
    def _commit_oldest(self) -> None:
        step = self.pipeline.oldest
        assert step is not None
        error: BaseException | None = None
        outputs: list[StepOutput] = []
        try:
            outputs = self.runner.read_outputs(step.slot)
        except DeviceLost:
            raise  # no later step can run either: the engine stops (fail_all, not ready)
        except Exception as exc:  # a failed forward/sampling fails this step's requests only
            log.exception("step %d failed", step.step_id)
            error = exc
        now = time.perf_counter()
        events: list[OutputEvent] = []
        zombies = committed = 0
        try:  # finals already decided must be delivered even if a later row raises
            for row, s in enumerate(step.rows):
                if s.finished:
                    zombies += 1
                elif error is not None:
                    self._end(s, FinishReason.ERROR, events,
                              error=RequestFailed(f"INTERNAL: the engine failed on this step: {error}"))
                else:
                    self._advance(s, outputs[row], now, events)
                    committed += 1
            _, unreferenced = self.pipeline.commit_oldest()
            if step.prefill:  # the prefixes it computed are usable now, or dropped
                self.table.prefix_cache.commit(step.step_id, ok=error is None)
            self.table.release_unreferenced(unreferenced)
        finally:
            self.output.put(events)
        fwd, samp = (0.0, 0.0) if error is not None else self.runner.step_times_ms(step.slot)
        self.telemetry.record_step(prefill=step.prefill, batch=len(step.rows), zombies=zombies,
                                   forward_ms=fwd, sampling_ms=samp, now=now, outputs=committed)

    def _advance(self, s: Sequence, output: StepOutput, now: float, events: list[OutputEvent]) -> None:
        """Feed one committed output to the request's constraint; stream or end it."""
        adv = s.constraint.advance(output)
        s.num_committed += 1
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
            self._end(s, reason, events, last=adv)
        elif s.request.stream and (adv.token_ids or adv.points or adv.boxes):
            events.append(OutputEvent(request=s.request, sink=s.sink, token_ids=adv.token_ids,
                                      points=adv.points, boxes=adv.boxes))

    # --------------------------------------------------------------- lifecycle
    def _end(self, s: Sequence, reason: str, events: list[OutputEvent], *,
             error: EngineError | None = None, last: Advance | None = None) -> None:
        """Emit the request's final output now (early); the table frees its resources
        once no launched step carries it (late)."""
        if error is not None:
            events.append(OutputEvent(request=s.request, sink=s.sink, error=error, final=True))
        else:
            last = last or Advance()
            events.append(OutputEvent(
                request=s.request, sink=s.sink, token_ids=last.token_ids, points=last.points,
                boxes=last.boxes, final=True, finish_reason=reason, all_token_ids=s.token_ids,
                all_points=s.points, all_boxes=s.boxes, num_input_tokens=s.num_prompt_tokens,
                num_output_tokens=s.num_committed, timings=s.timings,
            ))
        self.table.finish(s, reason, referenced=self.pipeline.inflight_refs(s) > 0)
        self.telemetry.count_request(finished=1)
        self._on_final(s.request_id)

    def _abort(self, request_id: str) -> None:
        s = self.table.get(request_id)
        if s is None or s.finished:
            return
        events: list[OutputEvent] = []
        try:
            self._end(s, FinishReason.CANCELLED, events)
        finally:
            self.output.put(events)

    def _stop_all(self) -> None:
        """Drain in-flight steps, then end every request with EngineStopped."""
        while self.pipeline.num_inflight:
            newest = self.pipeline.newest
            if newest is not None and not newest.sampled:
                self._sample_after_commit(newest)
            self._commit_oldest()
        self.fail_all(EngineStopped("UNAVAILABLE: the server is shutting down"))

    def fail_all(self, error: EngineError, *, crashed: bool = False) -> None:
        """End every unfinished request with ``error``: at shutdown, or after the
        scheduler thread died (``crashed``: then the pipeline may be inconsistent, so
        nothing is changed, only reported), and every submit still in the inbox."""
        events: list[OutputEvent] = []
        try:  # finals already decided are delivered even if a later one raises
            for s in self.table.live():
                if s.finished:
                    continue
                if crashed:
                    events.append(OutputEvent(request=s.request, sink=s.sink, error=error, final=True))
                    self._on_final(s.request_id)
                else:
                    self._end(s, FinishReason.ERROR, events, error=error)
            while True:
                try:
                    cmd = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if cmd.kind == "submit" and cmd.seq is not None:
                    events.append(OutputEvent(request=cmd.seq.request, sink=cmd.seq.sink, error=error, final=True))
                    self._on_final(cmd.seq.request_id)
        finally:
            self.output.put(events)

    # ------------------------------------------------------------------- stats
    def has_cached_prefix(self, image_key: str) -> bool:
        """Whether a prefill launched now would find this image's prefix cached (a racy
        hint for submitting threads: a later eviction only means a decode at prefill)."""
        return self.table.prefix_cache.lookup(image_key) is not None

    def live_counts(self) -> dict[str, int]:
        """Racy reads of sizes only (ints/len), fine for metrics from other threads."""
        return {
            "queue_depth": self.table.num_queued,
            "running": self.table.num_running,
            "zombies": self.table.num_zombies,
            "kv_pages_in_use": self.table.allocator.num_seq_pages,
            "kv_pages_total": self.table.allocator.capacity,
            "prefix_cache_pages": self.table.allocator.num_cache_only,
            "prefix_cache_entries": len(self.table.prefix_cache),
            "prefix_cache_hits": self.table.prefix_cache.hits,
            "prefix_cache_misses": self.table.prefix_cache.misses,
        }
