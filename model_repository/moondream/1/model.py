"""Triton decoupled Python-backend model ``moondream``: a thin adapter over moonpipe's Engine.

Threads (inside the stub process):

- the stub's main thread runs :meth:`TritonPythonModel.execute`: it parses and validates
  each request's tensors (``moondream_io.parse_request``) and calls ``Engine.submit``;
  it never sends a response itself and returns ``None``;
- the engine's output thread calls the ``QueueSink``, which only enqueues events;
- the sender thread (``moondream_sender.py``) owns every in-flight request's
  ``response_sender``: responses, cancellation, metrics (``moondream_metrics.py``) and
  the per-request log line;
- on SIGTERM a signal thread (``moondream_signals.py``) drains and stops the engine.

Every request gets exactly one response with the FINAL flag: its result or an error
whose message starts with a stable code (``INVALID_ARG: PROMPT: ...``).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils
from moondream_io import (
    INPUTS,
    adapter_config_from_parameters,
    engine_config_from_parameters,
    parse_request,
    read_parameters,
)
from moondream_metrics import Metrics
from moondream_sender import LiveRequest, QueueSink, Register, Reject, Sender
from moondream_signals import StopSignalWatch

from moonpipe.engine import Engine
from moonpipe.errors import EngineError, EngineStopped, RequestFailed
from moonpipe.testing import fault_hook_from_env


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
        fault_hook = fault_hook_from_env()  # test-only; None unless MOONPIPE_TEST_FAULTS is set
        if fault_hook is not None:
            self._logger.log_warn(f"moonpipe: TEST FAULT INJECTION armed from {fault_hook.trigger_dir}")
        self._engine = Engine(engine_config, fault_hook=fault_hook)  # a start-up error fails the load
        self._max_image_bytes = engine_config.max_image_bytes
        self._sender = Sender(self._engine, Metrics(args.get("model_name", "moondream")), self._config,
                              self._logger.log_info)
        self._sink = QueueSink(self._sender.events)
        self._ids = itertools.count()
        self._accepting = True
        self._signals: StopSignalWatch | None = None
        if self._config.handle_stop_signals:
            try:
                self._signals = StopSignalWatch(self._drain_and_stop, self._logger.log_info)
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

        def reject(skill: str, error: EngineError) -> None:
            self._sender.reject(Reject(request_id, sender, skill, triton_id, error))

        try:
            arrays = {}
            for spec in INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(triton_request, spec.name)
                arrays[spec.name] = None if tensor is None else tensor.as_numpy()
            request = parse_request(arrays, request_id, self._max_image_bytes)
        except EngineError as exc:
            reject("", exc)
            return
        except Exception as exc:
            reject("", RequestFailed(f"reading inputs: {exc}"))
            return
        if not self._accepting or not self._engine.ready:
            reject(request.skill, EngineStopped("the model is shutting down or its engine stopped"))
            return
        now = time.perf_counter()
        live = LiveRequest(request=request, sender=sender, triton_id=triton_id, received=now,
                           next_cancel_check=now + self._config.cancel_check_interval_ms / 1000.0)
        self._sender.events.put(Register(request_id, live))  # queued before any engine callback
        try:
            self._engine.submit(request, self._sink)
        except EngineError as exc:
            reject(request.skill, exc)
        except Exception as exc:
            reject(request.skill, RequestFailed(f"submit failed: {exc}"))

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
