"""The output thread: everything that happens to a request's output after commit.

The scheduler thread only appends token ids and objects to a queue (one ``put`` per
commit). This thread detokenises incrementally, parses segment paths, assembles the
``Result`` and calls the request's ``Sink``, so none of that lands on the decode tick.

Contract: for every ``OutputEvent`` with ``final`` set, the request's sink gets exactly
one ``on_result`` or ``on_error`` (after any ``on_delta``); an exception while
post-processing becomes an ``on_error(RequestFailed)``; an exception raised by a sink is
logged, then dropped, so one bad sink cannot stop the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from moonpipe.affinity import pin_thread
from moonpipe.errors import EngineError, RequestFailed
from moonpipe.model.tokenizer import Tokenizer
from moonpipe.request import Box, Delta, Point, Request, Result, Sink, Timings
from moonpipe.skills import final_output
from moonpipe.skills.detok import IncrementalDetokenizer

__all__ = ["OutputEvent", "OutputProcessor"]

log = logging.getLogger("moonpipe.output")


@dataclass(slots=True)
class OutputEvent:
    """One thing to deliver.

    ``token_ids``/``points``/``boxes`` are what this commit added (streamed as a delta);
    ``final`` events also carry the whole output in ``all_*`` for the result.
    """

    request: Request
    sink: Sink
    token_ids: list[int] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    final: bool = False
    all_token_ids: list[int] = field(default_factory=list)
    all_points: list[Point] = field(default_factory=list)
    all_boxes: list[Box] = field(default_factory=list)
    finish_reason: str = ""
    error: EngineError | None = None
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    timings: Timings | None = None


class OutputProcessor:
    """Owns the output thread and per-request detokenisers."""

    def __init__(self, tokenizer: Tokenizer, cpus: frozenset[int] | None = None) -> None:
        self._tokenizer = tokenizer
        self._cpus = cpus  # host CPUs when a process compute worker holds a core
        self._queue: queue.SimpleQueue[list[OutputEvent] | None] = queue.SimpleQueue()
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._thread = threading.Thread(target=self._loop, name="moonpipe-output", daemon=True)
        self._thread.start()

    def put(self, events: list[OutputEvent]) -> None:
        if events:
            self._queue.put(events)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        pin_thread(self._cpus)
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            for ev in batch:
                try:
                    self._deliver(ev)
                except Exception as exc:
                    rid = ev.request.request_id
                    log.exception("output processing failed for %s", rid)
                    if ev.final:  # the contract: one final callback, whatever failed
                        self._detok.pop(rid, None)
                        _safe(ev.sink.on_error, rid, RequestFailed(f"INTERNAL: output processing failed: {exc}"))

    def _deliver(self, ev: OutputEvent) -> None:
        rid = ev.request.request_id
        if ev.error is not None:
            self._detok.pop(rid, None)
            _safe(ev.sink.on_error, rid, ev.error)
            return
        if ev.request.stream:
            detok = self._detok.get(rid)
            if detok is None:
                detok = self._detok[rid] = IncrementalDetokenizer(self._tokenizer)
            text = detok.push(ev.token_ids) if ev.token_ids else ""
            if ev.final:
                text += detok.flush()
            if text or ev.points or ev.boxes:
                _safe(ev.sink.on_delta, rid, Delta(text=text, points=tuple(ev.points), boxes=tuple(ev.boxes)))
        if not ev.final:
            return
        self._detok.pop(rid, None)
        try:
            out = final_output(ev.request, ev.all_token_ids, ev.all_points, ev.all_boxes,
                               ev.finish_reason, self._tokenizer)
        except Exception as exc:
            log.exception("post-processing failed for %s", rid)
            _safe(ev.sink.on_error, rid, RequestFailed(f"post-processing failed: {exc}"))
            return
        if ev.timings is not None:
            ev.timings.finished = time.perf_counter()
        result = Result(
            request_id=rid,
            skill=ev.request.skill,
            finish_reason=out.finish_reason,
            text=out.text,
            points=tuple(out.points),
            boxes=tuple(out.boxes),
            svg_path=out.svg_path,
            num_input_tokens=ev.num_input_tokens,
            num_output_tokens=ev.num_output_tokens,
            timings=ev.timings,
            error=out.error,
            token_ids=tuple(ev.all_token_ids),
        )
        _safe(ev.sink.on_result, rid, result)


def _safe(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception:
        log.exception("sink callback raised")
