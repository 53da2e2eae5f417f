"""Helpers of the reliability suite: raw gRPC requests, images, metrics, processes, servers.

Raw requests are built here (not with the client package) so that a test can send what
no well-behaved client would: extra or missing inputs, wrong datatypes, shapes and byte
sizes. Everything talks to loopback addresses only and every wait is bounded.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from moonpipe_client.stream import wait_for_end
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.utils import serialize_byte_tensor

from moonpipe import repository

MODEL = "moondream"
ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "model_repository" / MODEL
FINAL_PARAM = "triton_final_response"
STUB_COMM = "triton_python_b"  # /proc/PID/comm of triton_python_backend_stub (15 chars)

# ---------------------------------------------------------------- images


def png(width: int, height: int, mode: str = "RGB", color: Any = None) -> bytes:
    """An encoded PNG of a flat picture (mode "1" keeps huge ones cheap to make)."""
    from PIL import Image

    fill = color if color is not None else (0 if mode == "1" else (120, 160, 200) if mode == "RGB" else 128)
    buf = io.BytesIO()
    Image.new(mode, (width, height), fill).save(buf, format="PNG")
    return buf.getvalue()


def picture(seed: int, width: int = 160, height: int = 120) -> bytes:
    """A distinct small noisy PNG per ``seed`` (distinct images defeat the image cache)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)  # (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header,
    with a valid CRC, so only the pixel count is wrong)."""
    data = bytearray(png(1, 1, mode="L"))
    ihdr = 16  # 8-byte signature + the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12:ihdr + 13])))
    return bytes(data)


def corrupt(data: bytes) -> bytes:
    """``data`` with the middle of its payload overwritten (a PNG's IDAT CRC then fails)."""
    out = bytearray(data)
    mid = len(out) // 2
    out[mid:mid + 16] = b"\x00\xff" * 8
    return bytes(out)


# ---------------------------------------------------------------- raw requests


@dataclass(frozen=True, slots=True)
class RawInput:
    """One input tensor exactly as it goes on the wire."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    content: bytes


def text_input(name: str, value: str | bytes) -> RawInput:
    """A STRING input of shape [1]."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return tensor_input(name, np.array([data], dtype=np.object_), "BYTES")


def tensor_input(name: str, array: np.ndarray, datatype: str,
                 shape: tuple[int, ...] | None = None) -> RawInput:
    """An input from a numpy array; ``shape`` overrides the declared shape."""
    if datatype == "BYTES":
        serialized = serialize_byte_tensor(array)
        content = serialized.item() if serialized.size else b""
    else:
        content = np.ascontiguousarray(array).tobytes()
    return RawInput(name, datatype, tuple(array.shape) if shape is None else shape, content)


def int_input(name: str, value: int) -> RawInput:
    return tensor_input(name, np.array([value], dtype=np.int32), "INT32")


def float_input(name: str, value: float) -> RawInput:
    return tensor_input(name, np.array([value], dtype=np.float32), "FP32")


def bool_input(name: str, value: bool) -> RawInput:
    return tensor_input(name, np.array([value], dtype=np.bool_), "BOOL")


def base_inputs(skill: str, image: bytes, prompt: str | None = None, **settings: Any) -> list[RawInput]:
    """A well-formed request's inputs; ``settings`` keys are input names in lower case."""
    inputs = [text_input("SKILL", skill), text_input("IMAGE", image)]
    if prompt is not None:
        inputs.append(text_input("PROMPT", prompt))
    for key, value in settings.items():
        name = key.upper()
        if name in ("MAX_TOKENS", "MAX_OBJECTS"):
            inputs.append(int_input(name, value))
        elif name in ("TEMPERATURE", "TOP_P"):
            inputs.append(float_input(name, value))
        elif name == "STREAM":
            inputs.append(bool_input(name, value))
        else:
            inputs.append(text_input(name, value))
    return inputs


def build_request(inputs: Iterable[RawInput], request_id: str = "") -> service_pb2.ModelInferRequest:
    """The ``ModelInferRequest`` (final responses flagged, see triton-local.md gotcha 7)."""
    request = service_pb2.ModelInferRequest()
    request.model_name = MODEL
    if request_id:
        request.id = request_id
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    for item in inputs:
        tensor = request.inputs.add()
        tensor.name = item.name
        tensor.datatype = item.datatype
        tensor.shape.extend(item.shape)
        request.raw_input_contents.append(item.content)
    return request


CHANNEL_OPTIONS = [("grpc.max_send_message_length", 2**31 - 1),
                   ("grpc.max_receive_message_length", 2**31 - 1)]


@dataclass
class Outcome:
    """How one request's stream ended."""

    responses: list[dict[str, np.ndarray]] = field(default_factory=list)
    final: bool = False  # a response flagged final arrived
    error: str | None = None  # the stream's error message (the request's final word)
    rpc_error: str | None = None  # the gRPC call itself failed (status name + details)

    @property
    def ended(self) -> bool:
        return self.final or self.error is not None or self.rpc_error is not None

    def last(self, name: str) -> Any:
        value = self.responses[-1][name].reshape(-1)[0]
        return value.decode() if isinstance(value, bytes) else value.item()

    def text(self) -> str:
        return "".join(b"".join(r["TEXT"].reshape(-1).tolist()).decode() for r in self.responses if "TEXT" in r)


def read_message(outcome: Outcome, message: service_pb2.ModelStreamInferResponse) -> None:
    """Add one stream message to ``outcome``."""
    if message.error_message:
        outcome.error = message.error_message
        return
    response = message.infer_response
    result = InferResult(response)
    outcome.responses.append({o.name: result.as_numpy(o.name) for o in response.outputs})
    params = response.parameters
    outcome.final = FINAL_PARAM in params and params[FINAL_PARAM].bool_param


def run_raw(url: str, inputs: Iterable[RawInput], timeout: float = 60.0) -> Outcome:
    """Send one request on its own stream; read until its final response or error, then
    let the server end the call."""
    outcome = Outcome()
    with grpc.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(iter([build_request(inputs)]), timeout=timeout)
        try:
            for message in call:
                read_message(outcome, message)
                if outcome.final or outcome.error is not None:
                    break
        except grpc.RpcError as exc:
            outcome.rpc_error = f"{exc.code().name}: {exc.details()}"
        finally:
            let_end(call)
    return outcome


def let_end(call: Any, timeout: float = 5.0) -> None:
    """Wait (bounded) until the server ended ``call``, then make sure it is over. Cancelling
    or closing a call at the moment the server ends it can keep Triton 2.51 from unloading
    the model at shutdown (docs/limits.md); after the final response the server ends the
    call at once, since every request stream here is half-closed after its one request."""
    wait_for_end(call, timeout)
    call.cancel()  # a no-op once ended


# ---------------------------------------------------------------- HTTP: metrics, readiness


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def model_ready(http_url: str) -> bool:
    return http_get(f"{http_url}/v2/models/{MODEL}/ready")[0] == 200


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples ``name{...} value`` whose labels include ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


IDLE_GAUGES = ("moonpipe_kv_pages_in_use", "moonpipe_running_sequences", "moonpipe_zombie_sequences",
               "moonpipe_queue_depth")


def engine_gauges(metrics_url: str) -> dict[str, float]:
    status, text = http_get(metrics_url)
    assert status == 200, f"metrics endpoint {metrics_url} answered {status}: {text[:200]}"
    return {name: metric_value(text, name) for name in IDLE_GAUGES}


def wait_idle(metrics_url: str, timeout: float = 30.0) -> dict[str, float]:
    """Poll the adapter's gauges until no page, sequence or queued request is left
    (they are exported every ``stats_interval_ms``); fail with the last values."""
    deadline = time.monotonic() + timeout
    while True:
        gauges = engine_gauges(metrics_url)
        if all(v == 0 for v in gauges.values()):
            return gauges
        if time.monotonic() > deadline:
            raise AssertionError(f"engine not idle after {timeout:.0f} s: {gauges}")
        time.sleep(0.25)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------- processes (/proc)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ")"
    return raw[raw.rindex(")") + 2:].split()


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (the server runs in its own session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return sorted(pids)


def compute_worker_pids(root: int) -> list[int]:
    """Live descendants of ``root`` that are CPU compute workers (fork-server children,
    in a process group of their own, so ``group_pids`` does not list them)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z":
                parent[int(entry.name)] = int(fields[1])

    def descends(pid: int) -> bool:
        while pid in parent and pid > 1:
            pid = parent[pid]
            if pid == root:
                return True
        return False

    return sorted(p for p in parent if descends(p) and b"multiprocessing.forkserver" in cmdline(p))


def cmdline(pid: int) -> bytes:
    """The raw command line of ``pid`` (empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def stub_pids(pgid: int) -> list[int]:
    """The Python-backend stub processes of the server whose process group is ``pgid``."""
    return [pid for pid in group_pids(pgid) if comm(pid) == STUB_COMM]


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of tritonserver and its stubs together."""
    return sum(rss_bytes(pid) for pid in group_pids(pgid))


# ---------------------------------------------------------------- dedicated servers

# Dedicated servers run a copy of the real model repository with some parameters changed;
# faults are injected through the engine's test-only hook, which the adapter arms from
# MOONPIPE_TEST_FAULTS (trigger files, one decode step per file: moonpipe/testing.py).


def set_parameter(config_text: str, key: str, value: str) -> str:
    """``config.pbtxt`` text with parameter ``key`` set to ``value`` (it must exist)."""
    assert repository.has_parameter(config_text, key), f"config.pbtxt has no parameter {key!r}"
    return repository.set_parameter(config_text, key, value)


def make_repository(target: Path, parameters: dict[str, str] | None = None) -> Path:
    """A copy of ``model_repository/`` under ``target`` with ``parameters`` changed."""
    model = target / MODEL
    version = model / "1"
    version.mkdir(parents=True)
    config = (MODEL_DIR / "config.pbtxt").read_text()
    for key, value in (parameters or {}).items():
        config = set_parameter(config, key, value)
    (model / "config.pbtxt").write_text(config)
    for source in (MODEL_DIR / "1").glob("*.py"):  # the adapter: model.py and its modules
        shutil.copy2(source, version / source.name)
    return target


def start_server(repository: Path, checkpoint: Path, log_path: Path,
                 env: dict[str, str] | None = None, ready_timeout: float = 240.0) -> Any:
    """A started, ready :class:`moonpipe.triton_local.TritonServer` on free loopback ports."""
    from moonpipe.triton_local import TritonServer, free_port

    server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_path=log_path,
                          env={"MOONPIPE_CHECKPOINT": str(checkpoint), **(env or {})})
    server.start()
    try:
        server.wait_ready(timeout=float(os.environ.get("MOONPIPE_TEST_READY_TIMEOUT", str(ready_timeout))))
    except BaseException:
        server.stop()
        raise
    return server


class OpenStream:
    """One request on its own gRPC stream, read by a background thread (bounded by
    ``timeout``): ``first`` is set at the first response, ``done`` when the stream ended
    (final response, error message, or a failed call) and the server ended the call: a
    well-behaved client (tritonclient's ``stop_stream``, ``moonpipe_client``) lets it end,
    and closing the channel while it ends can keep Triton 2.51 from unloading the model
    (docs/limits.md)."""

    def __init__(self, channel: grpc.Channel, inputs: Iterable[RawInput], timeout: float = 120.0) -> None:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.outcome = Outcome()
        self.first = threading.Event()
        self.done = threading.Event()
        self._call = stub.ModelStreamInfer(iter([build_request(inputs)]), timeout=timeout)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                read_message(self.outcome, message)
                self.first.set()
                if self.outcome.final or self.outcome.error is not None:
                    break
        except grpc.RpcError as exc:
            self.outcome.rpc_error = f"{exc.code().name}: {exc.details()}"
        finally:
            let_end(self._call)
            self.done.set()

    def cancel(self) -> None:
        self._call.cancel()

    def kind(self) -> str:
        """How it ended, for reports: "final:<reason>", "error", "rpc:<status>" or "open"."""
        o = self.outcome
        if o.final:
            return f"final:{o.last('FINISH_REASON')}" if "FINISH_REASON" in o.responses[-1] else "final:empty"
        if o.error is not None:
            return "error"
        if o.rpc_error is not None:
            return "rpc:" + o.rpc_error.split(":", 1)[0]
        return "open"
