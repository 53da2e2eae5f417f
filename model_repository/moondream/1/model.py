"""Triton decoupled Python-backend model ``moondream``: a thin adapter over moonpipe's Engine.

Threads (inside the stub process):

- the stub's main thread runs :meth:`TritonPythonModel.execute`: it parses and validates
  each request's tensors (``moondream_io.parse_request``) and calls ``Engine.submit``;
  it never sends a response itself and returns ``None``;
- the engine's output thread calls the :class:`_QueueSink`, which only enqueues events;
- one :class:`_Sender` thread owns every in-flight request's ``response_sender``: it
  sends responses (coalescing consecutive text deltas of one request that queued up
  while it was busy), polls ``is_cancelled()`` and calls ``Engine.abort``, records
  metrics and logs one line per request. So the ~0.25 ms of IPC per response never
  lands on the engine's scheduler thread.

Every request gets exactly one response with the FINAL flag: its result (finish reason
stop, length or cancelled) or an error whose message starts with a stable code
(``INVALID_ARG: PROMPT: ...``), since gRPC streaming drops Triton's error codes.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from moondream_io import (
    INPUTS,
    AdapterConfig,
    PendingDelta,
    adapter_config_from_parameters,
    engine_config_from_parameters,
    error_message,
    final_outputs,
    parse_request,
    read_parameters,
    stream_outputs,
)

from moonpipe.engine import Engine
from moonpipe.errors import EngineError, EngineStopped, RequestFailed
from moonpipe.request import Delta, Request, Result
from moonpipe.testing import FAULTS_ENV, file_trigger_fault_hook

_TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28]
_STOP = object()  # sentinel that ends the sender thread


@dataclass(slots=True)
class _Live:
    """The sender thread's record of one in-flight request."""

    request: Request
    sender: Any  # pb_utils.InferenceResponseSender
    triton_id: str
    received: float  # perf_counter at execute
    next_cancel_check: float
    aborted: bool = False
    responses: int = 0
    pending: PendingDelta = field(default_factory=PendingDelta)


class _QueueSink:
    """The engine's Sink: forwards every callback to the sender thread's queue."""

    def __init__(self, events: queue.SimpleQueue[Any]) -> None:
        self._events = events

    def on_delta(self, request_id: str, delta: Delta) -> None:
        self._events.put(("delta", request_id, delta))

    def on_result(self, request_id: str, result: Result) -> None:
        self._events.put(("result", request_id, result))

    def on_error(self, request_id: str, error: EngineError) -> None:
        self._events.put(("error", request_id, error))


class _Metrics:
    """The custom metric families (kept alive on this object: see triton-local.md)."""

    def __init__(self, model: str) -> None:
        f = pb_utils.MetricFamily
        self.labels = {"model": model}
        self._families = {
            "requests": f("moonpipe_requests_total", "Requests finished, by skill and finish reason", f.COUNTER),
            "prompt": f("moonpipe_prompt_tokens_total", "Prompt tokens of finished requests", f.COUNTER),
            "generated": f("moonpipe_generated_tokens_total", "Tokens generated for finished requests", f.COUNTER),
            "ttft": f("moonpipe_time_to_first_token_seconds", "Time from execute to the first output", f.HISTOGRAM),
            "itl": f("moonpipe_inter_token_latency_seconds", "Mean time between outputs, per request", f.HISTOGRAM),
            "queue": f("moonpipe_queue_depth", "Requests waiting for admission", f.GAUGE),
            "running": f("moonpipe_running_sequences", "Sequences being decoded", f.GAUGE),
            "zombies": f("moonpipe_zombie_sequences", "Finished sequences whose pages wait for in-flight steps", f.GAUGE),
            "kv_used": f("moonpipe_kv_pages_in_use", "KV-cache pages in use", f.GAUGE),
            "kv_total": f("moonpipe_kv_pages_total", "KV-cache pages in the pool", f.GAUGE),
            "period": f("moonpipe_step_period_ms", "Recent mean time between decode steps", f.GAUGE),
            "idle": f("moonpipe_step_idle_ms", "Recent mean device idle time per step (the bubble)", f.GAUGE),
            "batch": f("moonpipe_batch_size_mean", "Recent mean decode batch size", f.GAUGE),
            "depth": f("moonpipe_pipeline_depth", "Steps in flight (1 blocking, 2 pipelined)", f.GAUGE),
            "ready": f("moonpipe_engine_ready", "1 while the engine accepts requests, 0 after a crash or at shutdown", f.GAUGE),
        }
        self._by_key: dict[tuple[str, str], Any] = {}
        self.ttft = self._families["ttft"].Metric(labels=self.labels, buckets=_TTFT_BUCKETS)
        self.itl = self._families["itl"].Metric(labels=self.labels, buckets=_ITL_BUCKETS)
        self.prompt = self._families["prompt"].Metric(labels=self.labels)
        self.generated = self._families["generated"].Metric(labels=self.labels)
        self.gauges = {
            name: self._families[family].Metric(labels=self.labels)
            for name, family in (("queue_depth", "queue"), ("running", "running"), ("zombies", "zombies"),
                                 ("kv_pages_in_use", "kv_used"), ("kv_pages_total", "kv_total"),
                                 ("period_ms", "period"), ("idle_ms", "idle"),
                                 ("batch_size_mean", "batch"), ("pipeline_depth", "depth"),
                                 ("ready", "ready"))
        }

    def count_request(self, skill: str, finish_reason: str) -> None:
        key = (skill, finish_reason)
        metric = self._by_key.get(key)
        if metric is None:
            labels = {**self.labels, "skill": skill, "finish_reason": finish_reason}
            metric = self._by_key[key] = self._families["requests"].Metric(labels=labels)
        metric.increment(1)

    def export_stats(self, stats: Any) -> None:
        for name, gauge in self.gauges.items():
            gauge.set(float(getattr(stats, name)))


class _StopSignalWatch:
    """Ends the engine's work when the server is told to stop (SIGTERM).

    Triton unloads a decoupled model only after its in-flight requests ended, and calls
    ``finalize`` only after that; a long stream would hold the server past its exit
    timeout, after which Triton 2.51 exits hard with the streams still open. So on the
    signal the adapter stops accepting, lets requests finish for ``drain_s``, then shuts
    the engine down: every request left gets ``UNAVAILABLE: the server is shutting down``.
    The stub's main thread sits in C++, where a Python handler would not run; the C-level
    handler writes to a wakeup fd and this thread reacts. The signal must reach the
    stub: send it to the server's process group (``kill -TERM -<pgid>``), as
    ``moonpipe serve`` and the container entrypoint do.
    """

    def __init__(self, on_stop: Callable[[], None], log: Callable[[str], None]) -> None:
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        # SIGTERM only: the stub keeps its own SIGINT disposition (replacing it kept the
        # model from unloading in our runs); `moonpipe serve` and the container
        # entrypoint stop the server's group with SIGTERM.
        signal.signal(signal.SIGTERM, lambda *_: None)  # installs the C handler feeding the fd
        signal.set_wakeup_fd(write_fd)
        self._on_stop = on_stop
        self._log = log
        threading.Thread(target=self._run, name="moonpipe-signals", daemon=True).start()

    def _run(self) -> None:
        while True:  # the wakeup fd reports every signal that has a Python handler
            data = os.read(self._read_fd, 1)
            if not data or data[0] == signal.SIGTERM:
                break
        self._log("moonpipe: SIGTERM received: draining")
        self._on_stop()


class _Sender:
    """The one thread that talks to Triton about in-flight requests (see module docstring)."""

    def __init__(self, engine: Engine, metrics: _Metrics, config: AdapterConfig,
                 log: Callable[[str], None]) -> None:
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._engine = engine
        self._metrics = metrics
        self._config = config
        self._log = log
        self._live: dict[str, _Live] = {}  # owned by the sender thread only
        self._thread = threading.Thread(target=self._run, name="moonpipe-sender", daemon=True)
        self._thread.start()

    def reject(self, request_id: str, sender: Any, skill: str, triton_id: str, error: EngineError) -> None:
        """End a request that never reached (or was refused by) the engine with its error."""
        self.events.put(("reject", request_id, (sender, skill, triton_id, error)))
        if not self._thread.is_alive():  # finalize already ran: nobody else will send it
            self._drain()

    def join(self, timeout: float) -> None:
        """Stop the thread after the events queued so far, send whatever came later, and
        end any request the engine never finished (so each still gets one final response)."""
        self.events.put(_STOP)
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

    def _next_batch(self, timeout: float) -> list[Any]:
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

    def _handle(self, batch: list[Any]) -> bool:
        """Process one batch of events; returns True on the stop sentinel."""
        touched: dict[str, _Live] = {}
        stop = False
        for event in batch:
            if event is _STOP:
                stop = True
                continue
            try:
                self._handle_event(event, touched)
            except Exception as exc:  # never let one request's failure stop the thread
                self._fail(event[1], exc)
        for request_id, live in touched.items():
            if request_id in self._live:
                self._flush(request_id, live)
        return stop

    def _handle_event(self, event: tuple[str, str, Any], touched: dict[str, _Live]) -> None:
        kind, request_id, payload = event
        if kind == "register":
            self._live[request_id] = payload
            return
        live = self._live.get(request_id)
        if live is None:
            if kind == "reject":  # never registered: bad input or submit failed
                self._send_error(payload[0], payload[1], payload[2], payload[3])
            return
        if kind == "delta":
            live.pending.add(payload)
            touched[request_id] = live
        elif kind == "result":
            touched.pop(request_id, None)
            self._finish(request_id, live, payload)
        elif kind in ("error", "reject"):
            touched.pop(request_id, None)
            del self._live[request_id]
            err = payload if kind == "error" else payload[3]
            self._send_error(live.sender, live.request.skill, live.triton_id, err)

    def _fail(self, request_id: str, exc: Exception) -> None:
        self._log(f"moonpipe: handling an event of request {request_id} failed: {exc!r}")
        live = self._live.pop(request_id, None)
        if live is not None:
            self._abort(request_id, live)
            self._send_error(live.sender, live.request.skill, live.triton_id,
                             RequestFailed(f"the adapter failed while sending this request's output: {exc}"))

    # ------------------------------------------------------------------ sending

    def _send(self, request_id: str, live: _Live, outputs: dict[str, np.ndarray], final: bool) -> bool:
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

    def _flush(self, request_id: str, live: _Live) -> None:
        if not live.pending:
            return
        outputs = stream_outputs(live.pending)
        live.pending = PendingDelta()
        self._send(request_id, live, outputs, final=False)

    def _finish(self, request_id: str, live: _Live, result: Result) -> None:
        outputs = final_outputs(result, live.pending, live.request.stream)  # may raise: _fail still finds it
        del self._live[request_id]
        if self._send(request_id, live, outputs, final=True):
            self._record(request_id, live, result)

    def _send_error(self, sender: Any, skill: str, triton_id: str, error: BaseException) -> None:
        code = getattr(error, "code", "INTERNAL")
        message = f"INTERNAL: {error!r}"
        try:
            triton_code = {
                "INVALID_ARG": pb_utils.TritonError.INVALID_ARG,
                "UNAVAILABLE": pb_utils.TritonError.UNAVAILABLE,
                "CANCELLED": pb_utils.TritonError.CANCELLED,
            }.get(code, pb_utils.TritonError.INTERNAL)
            message = error_message(error)
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, triton_code)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:
            self._log(f"moonpipe: error response failed for {triton_id or '-'}: {exc}")
        self._metrics.count_request(skill or "unknown", "error")
        self._log(f"moonpipe request id={triton_id or '-'} skill={skill or '-'} finish=error error={message!r}")

    # ------------------------------------------------------------------ cancellation

    def _abort(self, request_id: str, live: _Live) -> None:
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

    def _record(self, request_id: str, live: _Live, result: Result) -> None:
        m = self._metrics
        m.count_request(live.request.skill, result.finish_reason)
        m.prompt.increment(result.num_input_tokens)
        m.generated.increment(result.num_output_tokens)
        t = result.timings
        ttft = itl = total = 0.0
        if t is not None:
            ttft = t.ttft
            total = max(0.0, t.finished - t.submitted) if t.finished else 0.0
            if t.first_output:
                m.ttft.observe(ttft)
            if len(t.output_times) >= 2:
                itl = (t.output_times[-1] - t.output_times[0]) / (len(t.output_times) - 1)
                m.itl.observe(itl)
        self._log(
            f"moonpipe request id={live.triton_id or request_id} skill={live.request.skill} "
            f"stream={live.request.stream} finish={result.finish_reason} "
            f"prompt_tokens={result.num_input_tokens} output_tokens={result.num_output_tokens} "
            f"responses={live.responses} queue_ms={(t.queue_time if t else 0.0) * 1e3:.1f} "
            f"ttft_ms={ttft * 1e3:.1f} itl_ms={itl * 1e3:.2f} total_ms={total * 1e3:.1f}"
            + (f" error={result.error!r}" if result.error else "")
        )


class TritonPythonModel:
    """The ``moondream`` model: initialize builds the engine, execute submits, finalize drains."""

    def initialize(self, args: dict[str, Any]) -> None:
        model_config = json.loads(args["model_config"])
        params = read_parameters(model_config)
        model_dir = Path(args["model_repository"])  # .../model_repository/moondream
        engine_config = engine_config_from_parameters(params, model_dir.parent)
        self._config = adapter_config_from_parameters(params)
        self._logger = pb_utils.Logger
        self._logger.log_info(f"moonpipe: starting engine {engine_config}")
        self._engine = Engine(engine_config)  # a start-up error fails the model load with its message
        self._max_image_bytes = engine_config.max_image_bytes
        self._metrics = _Metrics(args.get("model_name", "moondream"))
        self._sender = _Sender(self._engine, self._metrics, self._config, self._logger.log_info)
        self._sink = _QueueSink(self._sender.events)
        self._ids = itertools.count()
        self._accepting = True
        fault_dir = os.environ.get(FAULTS_ENV)
        if fault_dir:  # test-only (moonpipe/testing.py); never set in production
            self._logger.log_warn(f"moonpipe: TEST FAULT INJECTION armed from {fault_dir}")
            self._engine.set_fault_hook(file_trigger_fault_hook(fault_dir))
        self._signals: _StopSignalWatch | None = None
        if self._config.handle_stop_signals:
            try:
                self._signals = _StopSignalWatch(self._drain_and_stop, self._logger.log_info)
            except ValueError as exc:  # not the main thread: rely on finalize alone
                self._logger.log_warn(f"moonpipe: no stop-signal handling: {exc}")
        self._logger.log_info("moonpipe: engine ready")

    def is_ready(self) -> bool:
        """Model readiness for Python backends that ask the model (python_backend#430,
        newer than Triton 2.51); on 2.51 watch the ``moonpipe_engine_ready`` gauge."""
        return bool(self._accepting and self._engine.ready)

    def _drain_and_stop(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        deadline = time.monotonic() + float(self._config.shutdown_drain_s)
        while self._engine.num_in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self._engine.num_in_flight
        self._logger.log_info(f"moonpipe: drained; ending {left} request(s) still in flight")
        self._engine.shutdown(timeout=float(self._config.shutdown_timeout_s))

    def execute(self, requests: list[Any]) -> None:
        for triton_request in requests:
            self._submit(triton_request)
        return None

    def _submit(self, triton_request: Any) -> None:
        sender = triton_request.get_response_sender()
        triton_id = triton_request.request_id()
        request_id = f"{next(self._ids)}"
        events = self._sender.events
        try:
            arrays = {}
            for spec in INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(triton_request, spec.name)
                arrays[spec.name] = None if tensor is None else tensor.as_numpy()
            request = parse_request(arrays, request_id, self._max_image_bytes)
        except EngineError as exc:
            self._sender.reject(request_id, sender, "", triton_id, exc)
            return
        except Exception as exc:
            self._sender.reject(request_id, sender, "", triton_id, RequestFailed(f"reading inputs: {exc}"))
            return
        if not self._accepting or not self._engine.ready:
            self._sender.reject(request_id, sender, request.skill, triton_id,
                                EngineStopped("the model is shutting down or its engine stopped"))
            return
        now = time.perf_counter()
        live = _Live(request=request, sender=sender, triton_id=triton_id, received=now,
                     next_cancel_check=now + self._config.cancel_check_interval_ms / 1000.0)
        events.put(("register", request_id, live))  # queued before any engine callback
        try:
            self._engine.submit(request, self._sink)
        except EngineError as exc:
            self._sender.reject(request_id, sender, request.skill, triton_id, exc)
        except Exception as exc:
            self._sender.reject(request_id, sender, request.skill, triton_id, RequestFailed(f"submit failed: {exc}"))

    def finalize(self) -> None:
        started = time.perf_counter()
        self._accepting = False
        timeout = float(self._config.shutdown_timeout_s)
        try:
            self._engine.shutdown(timeout=timeout)  # every in-flight request gets its final callback
        except Exception as exc:
            self._logger.log_error(f"moonpipe: engine shutdown failed: {exc}")
        engine_s = time.perf_counter() - started
        self._sender.join(timeout)
        self._logger.log_info(f"moonpipe: finalized in {time.perf_counter() - started:.2f} s "
                              f"(engine {engine_s:.2f} s)")
