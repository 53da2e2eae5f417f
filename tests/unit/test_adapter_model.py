"""model.py driven in-process through a stand-in for ``triton_python_backend_utils``.

The stand-in records what the adapter sends; the engine is the real one over the tiny
synthetic checkpoint (or, for the sender-thread details, a scripted engine).
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from moonpipe.request import Delta, Result

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / "moondream"
FINAL = 1


class _Metric:
    def __init__(self, family: _Family, labels: dict[str, str]) -> None:
        self.family, self.labels, self.value, self.observations = family, labels, 0.0, []  # type: ignore[var-annotated]

    def increment(self, value: float) -> None:
        self.value += value

    def set(self, value: float) -> None:
        self.value = value

    def observe(self, value: float) -> None:
        self.observations.append(value)


class _Family:
    COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
    registry: ClassVar[dict[str, _Family]] = {}

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name, self.kind, self.metrics = name, kind, []  # type: ignore[var-annotated]
        _Family.registry[name] = self

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> _Metric:
        metric = _Metric(self, labels)
        self.metrics.append(metric)
        return metric


class _TritonError:
    INVALID_ARG, UNAVAILABLE, CANCELLED, INTERNAL = 3, 14, 1, 13

    def __init__(self, message: str, code: int = 13) -> None:
        self.message_text, self.code = message, code

    def message(self) -> str:
        return self.message_text


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: _TritonError | None = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


def _fake_pb_utils(log: list[str]) -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL  # type: ignore[attr-defined]
    module.Logger = types.SimpleNamespace(log_info=log.append, log_error=log.append)  # type: ignore[attr-defined]
    module.MetricFamily = _Family  # type: ignore[attr-defined]
    module.TritonError = _TritonError  # type: ignore[attr-defined]
    module.Tensor = _Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = _Response  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: (  # type: ignore[attr-defined]
        None if name not in request.inputs else _Tensor(name, request.inputs[name]))
    return module


@dataclass
class FakeSender:
    """Records responses; ``gate`` (if set) blocks the first send until released."""

    responses: list[tuple[_Response, int]] = field(default_factory=list)
    cancelled: bool = False
    gate: threading.Event | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def send(self, response: _Response, flags: int = 0) -> None:
        if self.gate is not None:
            gate, self.gate = self.gate, None
            gate.wait(10)
        self.responses.append((response, flags))
        if flags & FINAL:
            self.done.set()

    def is_cancelled(self) -> bool:
        return self.cancelled

    def wait(self, timeout: float = 30.0) -> list[tuple[_Response, int]]:
        assert self.done.wait(timeout), "no final response"
        return self.responses


@dataclass
class FakeRequest:
    inputs: dict[str, np.ndarray]
    sender: FakeSender = field(default_factory=FakeSender)

    def get_response_sender(self) -> FakeSender:
        return self.sender

    def request_id(self) -> str:
        return "client-id"


def request(skill: str, image: bytes, **inputs: Any) -> FakeRequest:
    arrays = {"SKILL": np.array([skill.encode()], np.object_), "IMAGE": np.array([image], np.object_)}
    for name, value in inputs.items():
        if isinstance(value, str):
            arrays[name] = np.array([value.encode()], np.object_)
        elif isinstance(value, bool):
            arrays[name] = np.array([value])
        elif isinstance(value, int):
            arrays[name] = np.array([value], np.int32)
        else:
            arrays[name] = np.array([value], np.float32)
    return FakeRequest(arrays)


ADAPTER_MODULES = ("model", "moondream_sender", "moondream_metrics", "moondream_signals")


@pytest.fixture
def model_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[types.ModuleType, list[str]]]:
    log: list[str] = []
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils(log))
    monkeypatch.syspath_prepend(str(MODEL_DIR / "1"))
    for name in ADAPTER_MODULES:  # each test imports them afresh, over its own stand-in
        monkeypatch.delitem(sys.modules, name, raising=False)
    _Family.registry.clear()
    module = importlib.import_module("model")
    yield module, log
    for name in ADAPTER_MODULES:
        sys.modules.pop(name, None)


def _adapter(name: str) -> types.ModuleType:
    """One of the adapter's modules, as imported by ``model`` in this test."""
    return sys.modules[name]


def _args(checkpoint: Path, **params: str) -> dict[str, str]:
    values = {"checkpoint": str(checkpoint), "device": "cpu", "dtype": "float32", "max_batch_size": "4",
              "cancel_check_interval_ms": "20", "stats_interval_ms": "50",
              "handle_stop_signals": "0", **params}
    config = {"parameters": {k: {"string_value": v} for k, v in values.items()}}
    return {"model_config": json.dumps(config), "model_repository": str(MODEL_DIR), "model_name": "moondream",
            "model_version": "1"}


@pytest.fixture
def model(model_module: tuple[types.ModuleType, list[str]], tiny_checkpoint: Path) -> Iterator[Any]:
    module, _ = model_module
    instance = module.TritonPythonModel()
    instance.initialize(_args(tiny_checkpoint))
    yield instance
    instance.finalize()


def _text(responses: list[tuple[_Response, int]]) -> str:
    return "".join(r.outputs["TEXT"][0].decode() for r, _ in responses if r.error is None)


def test_streaming_request_gets_deltas_then_exactly_one_final(model: Any, sample_image_bytes: bytes) -> None:
    req = request("caption", sample_image_bytes, STREAM=True, MAX_TOKENS=6)
    assert model.execute([req]) is None
    responses = req.sender.wait()
    flags = [f for _, f in responses]
    assert flags.count(FINAL) == 1 and flags[-1] == FINAL
    final = responses[-1][0]
    assert final.outputs["FINISH_REASON"][0] in (b"stop", b"length")
    assert 0 < final.outputs["NUM_OUTPUT_TOKENS"][0] <= 6
    assert "FINISH_REASON" not in responses[0][0].outputs or len(responses) == 1
    assert _text(responses).strip()


def test_bad_input_gets_one_final_error_and_never_reaches_the_engine(model: Any, sample_image_bytes: bytes) -> None:
    submitted = model._engine.stats().requests_submitted
    req = request("query", sample_image_bytes)  # no PROMPT
    model.execute([req])
    responses = req.sender.wait()
    assert len(responses) == 1 and responses[0][1] == FINAL
    error = responses[0][0].error
    assert error is not None and error.message().startswith("INVALID_ARG: PROMPT:")
    assert error.code == _TritonError.INVALID_ARG
    assert model._engine.stats().requests_submitted == submitted


def test_undecodable_image_is_refused_by_submit(model: Any) -> None:
    req = request("caption", b"not an image")
    model.execute([req])
    error = req.sender.wait()[0][0].error
    assert error is not None and error.message().startswith("INVALID_ARG: IMAGE:")


def test_cancelled_request_is_aborted_and_still_gets_a_final(model: Any, sample_image_bytes: bytes) -> None:
    req = request("caption", sample_image_bytes, STREAM=True, MAX_TOKENS=1000, TEMPERATURE=1.0)
    req.sender.cancelled = True
    model.execute([req])
    responses = req.sender.wait()
    assert responses[-1][1] == FINAL
    assert responses[-1][0].outputs["FINISH_REASON"].tolist() == [b"cancelled"]
    deadline = time.monotonic() + 10
    while model._engine.stats().kv_pages_in_use and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model._engine.stats().kv_pages_in_use == 0


def test_metrics_and_log_line_are_recorded(model_module: tuple[types.ModuleType, list[str]],
                                           model: Any, sample_image_bytes: bytes) -> None:
    _, log = model_module
    req = request("caption", sample_image_bytes, MAX_TOKENS=4)
    model.execute([req])
    req.sender.wait()
    time.sleep(0.2)
    requests_total = _Family.registry["moonpipe_requests_total"].metrics
    assert sum(m.value for m in requests_total if m.labels["skill"] == "caption") == 1
    assert _Family.registry["moonpipe_generated_tokens_total"].metrics[0].value == 4
    assert len(_Family.registry["moonpipe_time_to_first_token_seconds"].metrics[0].observations) == 1
    assert _Family.registry["moonpipe_kv_pages_total"].metrics[0].value > 0
    assert any("moonpipe request" in line and "skill=caption" in line for line in log)


def test_finalize_ends_in_flight_requests_with_a_final_response(
        model_module: tuple[types.ModuleType, list[str]], tiny_checkpoint: Path, sample_image_bytes: bytes) -> None:
    module, _ = model_module
    instance = module.TritonPythonModel()
    instance.initialize(_args(tiny_checkpoint))
    req = request("caption", sample_image_bytes, STREAM=True, MAX_TOKENS=1000, TEMPERATURE=1.0)
    instance.execute([req])
    time.sleep(0.3)
    instance.finalize()
    responses = req.sender.wait(5)
    assert [f for _, f in responses].count(FINAL) == 1
    late = request("caption", sample_image_bytes)
    instance.execute([late])  # after finalize: refused, still exactly one final
    error = late.sender.wait(5)[0][0].error
    assert error is not None and error.message().startswith("UNAVAILABLE:")


def test_start_up_error_fails_initialize_with_its_message(
        model_module: tuple[types.ModuleType, list[str]], tmp_path: Path) -> None:
    module, _ = model_module
    with pytest.raises(Exception, match="does not exist"):
        module.TritonPythonModel().initialize(_args(tmp_path / "missing"))
    with pytest.raises(ValueError, match="max_batch_size"):
        module.TritonPythonModel().initialize(_args(tmp_path, max_batch_size="lots"))


class ScriptedEngine:
    """Just enough engine for the sender thread: records aborts, reports idle stats."""

    def __init__(self) -> None:
        self.aborted: list[str] = []

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def stats(self) -> Any:
        return types.SimpleNamespace(queue_depth=0, running=0, zombies=0, kv_pages_in_use=0, kv_pages_total=8,
                                     period_ms=1.0, idle_ms=0.1, batch_size_mean=1.0, pipeline_depth=2)


def _sender(engine: ScriptedEngine) -> Any:
    from moondream_io import AdapterConfig

    config = AdapterConfig(cancel_check_interval_ms=10, stats_interval_ms=50)
    metrics = _adapter("moondream_metrics").Metrics("moondream")
    return _adapter("moondream_sender").Sender(engine, metrics, config, lambda line: None)


def _live(sender: FakeSender, image: bytes) -> Any:
    from moondream_io import parse_request

    req = parse_request(request("caption", image, STREAM=True).inputs, "r1", 10**6)
    now = time.perf_counter()
    return _adapter("moondream_sender").LiveRequest(request=req, sender=sender, triton_id="t", received=now,
                                                    next_cancel_check=now + 60)


def _event(kind: str, *args: Any) -> Any:
    """An event of the sender's queue: ``Register``, ``StreamDelta``, ``Final``, ``Failed``..."""
    return getattr(_adapter("moondream_sender"), kind)("r1", *args)


def test_deltas_that_queue_up_while_sending_are_coalesced(
        model_module: tuple[types.ModuleType, list[str]], sample_image_bytes: bytes) -> None:
    gate = threading.Event()
    fake = FakeSender(gate=gate)
    thread = _sender(ScriptedEngine())
    thread.events.put(_event("Register", _live(fake, sample_image_bytes)))
    thread.events.put(_event("StreamDelta", Delta(text="a")))
    time.sleep(0.1)  # the sender is now blocked in its first send
    for piece in ("b", "c", "d"):
        thread.events.put(_event("StreamDelta", Delta(text=piece)))
    thread.events.put(_event("Final", Result(request_id="r1", skill="caption", finish_reason="stop",
                                             text="abcd", num_input_tokens=3, num_output_tokens=4)))
    gate.set()
    responses = fake.wait()
    thread.join(5)
    assert [r.outputs["TEXT"][0] for r, _ in responses] == [b"a", b"bcd"]
    assert [f for _, f in responses] == [0, FINAL]


def test_sender_polls_is_cancelled_and_aborts_once(
        model_module: tuple[types.ModuleType, list[str]], sample_image_bytes: bytes) -> None:
    engine = ScriptedEngine()
    fake = FakeSender()
    thread = _sender(engine)
    live = _live(fake, sample_image_bytes)
    live.next_cancel_check = 0.0
    thread.events.put(_event("Register", live))
    fake.cancelled = True
    deadline = time.monotonic() + 5
    while not engine.aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert engine.aborted == ["r1"]
    thread.events.put(_event("Final", Result(request_id="r1", skill="caption", finish_reason="cancelled")))
    assert fake.wait()[-1][0].outputs["FINISH_REASON"].tolist() == [b"cancelled"]
    thread.join(5)


class BrokenSender(FakeSender):
    """The client vanished: the first send raises."""

    def send(self, response: _Response, flags: int = 0) -> None:
        if not self.responses and not flags & FINAL:
            self.responses.append((response, -1))
            raise RuntimeError("stream closed")
        super().send(response, flags)


def test_a_failed_send_aborts_the_request_which_still_ends_once(
        model_module: tuple[types.ModuleType, list[str]], sample_image_bytes: bytes) -> None:
    engine = ScriptedEngine()
    fake = BrokenSender()
    thread = _sender(engine)
    thread.events.put(_event("Register", _live(fake, sample_image_bytes)))
    thread.events.put(_event("StreamDelta", Delta(text="a")))
    deadline = time.monotonic() + 5
    while not engine.aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.aborted == ["r1"]
    thread.events.put(_event("Final", Result(request_id="r1", skill="caption", finish_reason="cancelled")))
    assert [f for _, f in fake.wait()][-1] == FINAL
    thread.join(5)


def test_unload_ends_requests_the_engine_never_finished(
        model_module: tuple[types.ModuleType, list[str]], sample_image_bytes: bytes) -> None:
    fake = FakeSender()
    thread = _sender(ScriptedEngine())
    thread.events.put(_event("Register", _live(fake, sample_image_bytes)))
    thread.join(5)
    error = fake.wait(1)[-1][0].error
    assert error is not None and error.message().startswith("UNAVAILABLE:")
