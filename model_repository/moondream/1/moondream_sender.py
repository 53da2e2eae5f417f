"""The moondream adapter's sender thread: the one thread that talks to Triton about
in-flight requests.

Everything reaches it as an event on one queue (``Sender.events``): ``Register`` from
``execute`` (before the engine can call back), ``StreamDelta``/``Final``/``Failed`` from the
engine's output thread through :class:`QueueSink`, ``Reject`` for requests that never
reached (or were refused by) the engine. It sends responses (coalescing consecutive text
deltas of one request that queued up while it was busy), polls ``is_cancelled()`` and
calls ``Engine.abort``, records metrics and logs one line per request. So the ~0.25 ms of
IPC per response never lands on the engine's scheduler thread.

Contract: every registered or rejected request gets exactly one response flagged FINAL:
its result (finish reason stop, length or cancelled) or an error whose message starts
with a stable code (``INVALID_ARG: PROMPT: ...``), since gRPC streaming drops Triton's
error codes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import triton_python_backend_utils as pb_utils
from moondream_io import AdapterConfig, PendingDelta, error_message, final_outputs, stream_outputs
from moondream_metrics import Metrics

from moonpipe.engine import EngineStats
from moonpipe.errors import EngineError, EngineStopped, RequestFailed
from moonpipe.request import Delta, Request, Result

__all__ = ["Failed", "Final", "LiveRequest", "QueueSink", "Register", "Reject", "Sender", "StreamDelta"]


class EngineControl(Protocol):
    """What the sender needs of the engine."""

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...


@dataclass(slots=True)
class LiveRequest:
    """The sender thread's record of one in-flight request."""

    request: Request
    sender: Any  # pb_utils.InferenceResponseSender
    triton_id: str
    received: float  # perf_counter at execute
    next_cancel_check: float
    aborted: bool = False
    responses: int = 0
    pending: PendingDelta = field(default_factory=PendingDelta)


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Register:
    """``execute`` accepted a request; queued before anything the engine says about it."""

    request_id: str
    live: LiveRequest


@dataclass(frozen=True, slots=True)
class StreamDelta:
    request_id: str
    delta: Delta


@dataclass(frozen=True, slots=True)
class Final:
    request_id: str
    result: Result


@dataclass(frozen=True, slots=True)
class Failed:
    request_id: str
    error: EngineError


@dataclass(frozen=True, slots=True)
class Reject:
    """End a request with ``error``: it never reached the engine, or submit refused it."""

    request_id: str
    sender: Any
    skill: str
    triton_id: str
    error: EngineError


@dataclass(frozen=True, slots=True)
class _Stop:
    """Ends the sender thread after the events queued before it."""


Event = Register | StreamDelta | Final | Failed | Reject | _Stop


class QueueSink:
    """The engine's Sink: forwards every callback to the sender thread's queue."""

    def __init__(self, events: queue.SimpleQueue[Event]) -> None:
        self._events = events

    def on_delta(self, request_id: str, delta: Delta) -> None:
        self._events.put(StreamDelta(request_id, delta))

    def on_result(self, request_id: str, result: Result) -> None:
        self._events.put(Final(request_id, result))

    def on_error(self, request_id: str, error: EngineError) -> None:
        self._events.put(Failed(request_id, error))


_CLIENT_CODES = ("INVALID_ARG", "UNAVAILABLE")  # Triton error codes we pass on; others: INTERNAL


class Sender:
    """The sender thread (see module docstring)."""

    def __init__(self, engine: EngineControl, metrics: Metrics, config: AdapterConfig,
                 log: Callable[[str], None]) -> None:
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._engine = engine
        self._metrics = metrics
        self._config = config
        self._log = log
        self._live: dict[str, LiveRequest] = {}  # owned by the sender thread only
        self._thread = threading.Thread(target=self._run, name="moonpipe-sender", daemon=True)
        self._thread.start()

    def reject(self, event: Reject) -> None:
        """End a request that never reached (or was refused by) the engine with its error."""
        self.events.put(event)
        if not self._thread.is_alive():  # finalize already ran: nobody else will send it
            self._drain()

    def join(self, timeout: float) -> None:
        """Stop the thread after the events queued so far, send whatever came later, and
        end any request the engine never finished (so each still gets one final response)."""
        self.events.put(_Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._log("moonpipe: sender thread did not stop in time")
            return
        self._drain()
        for request_id, live in list(self._live.items()):
            del self._live[request_id]
            self._send_error(live.sender, live.request.skill, live.triton_id,
                             EngineStopped("the model was unloaded before this request finished"))

    def _drain(self) -> None:
        batch = []
        while True:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        if batch:
            self._handle(batch)

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a dead sender would hang every client: say why, loudly
            self._log(f"moonpipe: sender thread died: {exc!r}")
            raise

    def _loop(self) -> None:
        cancel_every = self._config.cancel_check_interval_ms / 1000.0
        stats_every = self._config.stats_interval_ms / 1000.0
        next_stats = 0.0
        while True:
            batch = self._next_batch(min(cancel_every, stats_every))
            if batch and self._handle(batch):
                return
            now = time.perf_counter()
            self._check_cancelled(now)
            if now >= next_stats:
                next_stats = now + stats_every
                self._export_stats()

    def _next_batch(self, timeout: float) -> list[Event]:
        """Wait up to ``timeout`` for an event, then take whatever else queued up meanwhile
        (that is where consecutive deltas of one request get coalesced under load)."""
        try:
            batch = [self.events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < 4096:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        return batch

    def _handle(self, batch: list[Event]) -> bool:
        """Process one batch of events; returns True on the stop event."""
        touched: dict[str, LiveRequest] = {}
        stop = False
        for event in batch:
            if isinstance(event, _Stop):
                stop = True
                continue
            try:
                self._handle_event(event, touched)
            except Exception as exc:  # never let one request's failure stop the thread
                self._fail(event.request_id, exc)
        for request_id, live in touched.items():
            if request_id in self._live:
                self._flush(request_id, live)
        return stop

    def _handle_event(self, event: Register | StreamDelta | Final | Failed | Reject,
                      touched: dict[str, LiveRequest]) -> None:
        rid = event.request_id
        if isinstance(event, Register):
            self._live[rid] = event.live
            return
        live = self._live.get(rid)
        if live is None:
            if isinstance(event, Reject):  # never registered: bad input or submit failed
                self._send_error(event.sender, event.skill, event.triton_id, event.error)
            return
        if isinstance(event, StreamDelta):
            live.pending.add(event.delta)
            touched[rid] = live
            return
        touched.pop(rid, None)
        if isinstance(event, Final):
            self._finish(rid, live, event.result)
        else:
            del self._live[rid]
            self._send_error(live.sender, live.request.skill, live.triton_id, event.error)

    def _fail(self, request_id: str, exc: Exception) -> None:
        self._log(f"moonpipe: handling an event of request {request_id} failed: {exc!r}")
        live = self._live.pop(request_id, None)
        if live is not None:
            self._abort(request_id, live)
            self._send_error(live.sender, live.request.skill, live.triton_id,
                             RequestFailed(f"the adapter failed while sending this request's output: {exc}"))

    # ------------------------------------------------------------------ sending

    def _send(self, request_id: str, live: LiveRequest, outputs: dict[str, np.ndarray], final: bool) -> bool:
        """Send one response; False if it failed (a failed final is replaced by an error)."""
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        try:
            response = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items()])
            live.sender.send(response, flags=flags)
            live.responses += 1
            return True
        except Exception as exc:  # the client is gone (or the response was unbuildable)
            self._log(f"moonpipe: send failed for {request_id}: {exc}")
            if not final:
                self._abort(request_id, live)
            else:  # still owe this request its FINAL flag: try once more, as an error
                self._send_error(live.sender, live.request.skill, live.triton_id,
                                 RequestFailed(f"sending the final response failed: {exc}"))
            return False

    def _flush(self, request_id: str, live: LiveRequest) -> None:
        if not live.pending:
            return
        outputs = stream_outputs(live.pending)
        live.pending = PendingDelta()
        self._send(request_id, live, outputs, final=False)

    def _finish(self, request_id: str, live: LiveRequest, result: Result) -> None:
        outputs = final_outputs(result, live.pending, live.request.stream)  # may raise: _fail still finds it
        del self._live[request_id]
        if self._send(request_id, live, outputs, final=True):
            self._record(request_id, live, result)

    def _send_error(self, sender: Any, skill: str, triton_id: str, error: BaseException) -> None:
        message = f"INTERNAL: {error!r}"
        try:
            code = getattr(error, "code", "")
            triton_code = getattr(pb_utils.TritonError, code if code in _CLIENT_CODES else "INTERNAL")
            message = error_message(error)
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, triton_code)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:
            self._log(f"moonpipe: error response failed for {triton_id or '-'}: {exc}")
        self._metrics.count_request(skill or "unknown", "error")
        self._log(f"moonpipe request id={triton_id or '-'} skill={skill or '-'} finish=error error={message!r}")

    # ------------------------------------------------------------------ cancellation

    def _abort(self, request_id: str, live: LiveRequest) -> None:
        if not live.aborted:
            live.aborted = True
            self._engine.abort(request_id)

    def _check_cancelled(self, now: float) -> None:
        interval = self._config.cancel_check_interval_ms / 1000.0
        for request_id, live in list(self._live.items()):
            if live.aborted or now < live.next_cancel_check:
                continue
            live.next_cancel_check = now + interval
            try:
                cancelled = live.sender.is_cancelled()
            except Exception as exc:
                self._log(f"moonpipe: is_cancelled failed for {request_id}: {exc}")
                cancelled = True
            if cancelled:
                self._abort(request_id, live)

    # ------------------------------------------------------------------ telemetry

    def _export_stats(self) -> None:
        try:
            self._metrics.export_stats(self._engine.stats())
        except Exception as exc:
            self._log(f"moonpipe: exporting engine stats failed: {exc}")

    def _record(self, request_id: str, live: LiveRequest, result: Result) -> None:
        ttft, itl, total = self._metrics.record_result(live.request.skill, result)
        t = result.timings
        self._log(
            f"moonpipe request id={live.triton_id or request_id} skill={live.request.skill} "
            f"stream={live.request.stream} finish={result.finish_reason} "
            f"prompt_tokens={result.num_input_tokens} output_tokens={result.num_output_tokens} "
            f"responses={live.responses} queue_ms={(t.queue_time if t else 0.0) * 1e3:.1f} "
            f"ttft_ms={ttft * 1e3:.1f} itl_ms={itl * 1e3:.2f} total_ms={total * 1e3:.1f}"
            + (f" error={result.error!r}" if result.error else "")
        )
