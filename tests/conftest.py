"""Shared fixtures.

``triton_server`` (session scope) starts the real tritonserver bundled in nvidia-pytriton
with the project's ``model_repository/`` on free loopback ports, over a synthetic tiny
checkpoint made in a temporary folder, and stops it at the end. Only e2e tests use it, so
``pytest -m "not e2e"`` never starts a server. A failing test that used the server gets
the server log's tail attached to its report.
"""

from __future__ import annotations

import io
import os
import queue
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels (moonpipe/kernels, marker `kernel`) run under Triton's
# interpreter. Triton reads this when a kernel module is first imported, so it is set
# here, before any test imports one. Subprocesses (servers, the CPU gpu-check) inherit it.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

ROOT = Path(__file__).resolve().parent.parent
MODEL = "moondream"


@dataclass
class ServerHandle:
    """What e2e tests need to reach the session's server."""

    grpc_url: str  # "127.0.0.1:PORT", as tritonclient wants it
    http_url: str
    metrics_url: str
    checkpoint: Path
    server: Any  # moonpipe.triton_local.TritonServer

    def log_text(self) -> str:
        return str(self.server.log_text())

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        return metric_value(self.metrics_text(), name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum the Prometheus samples ``name{...} value`` matching ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def wait_until_idle(server: ServerHandle, cancelled_before: float, timeout: float = 20.0) -> None:
    """Until the metrics show one more cancelled request, no running sequence, no pages in use."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.metrics_text()
        cancelled = metric_value(text, "moonpipe_requests_total", finish_reason="cancelled")
        pages = metric_value(text, "moonpipe_kv_pages_in_use")
        running = metric_value(text, "moonpipe_running_sequences")
        if cancelled >= cancelled_before + 1 and pages == 0 and running == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not idle after {timeout} s: cancelled={cancelled} (before {cancelled_before}), "
                        f"kv_pages_in_use={pages}, running={running}")
        time.sleep(0.2)


def make_png(width: int = 320, height: int = 240) -> bytes:
    """A small synthetic PNG (a red ball on a table) as encoded bytes."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height * 5 // 8, width, height), fill=(150, 100, 60))
    draw.ellipse((width * 3 // 8, height * 3 // 8, width * 5 // 8, height * 2 // 3), fill=(210, 30, 40))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def sample_image_bytes() -> bytes:
    """Encoded PNG bytes of a small synthetic picture."""
    return make_png()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic tiny checkpoint (deterministic, ~20 MB, ~2 s to make)."""
    from moonpipe.model.checkpoint import ensure_checkpoint

    return Path(ensure_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny", preset="tiny"))


@pytest.fixture(scope="session")
def triton_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    """The real tritonserver over ``model_repository/`` (one for the whole session)."""
    from moonpipe.triton_local import TritonServer, free_port

    log_path = tmp_path_factory.mktemp("tritonserver") / "server.log"
    server = TritonServer(
        ROOT / "model_repository", http_port=free_port(), grpc_port=free_port(),
        metrics_port=free_port(), env={"MOONPIPE_CHECKPOINT": str(tiny_checkpoint)},
        log_path=log_path,
    )
    server.start()
    try:
        server.wait_ready(timeout=float(os.environ.get("MOONPIPE_TEST_READY_TIMEOUT", "240")))
    except BaseException:
        server.stop()
        raise
    handle = ServerHandle(grpc_url=server.urls.grpc, http_url=server.urls.http,
                          metrics_url=server.urls.metrics, checkpoint=tiny_checkpoint, server=server)
    request.config.stash[_SERVER_KEY] = handle
    yield handle
    code = server.stop()
    if request.session.testsfailed:
        print(f"\n---- tritonserver log ({log_path}, exit code {code}), last lines ----\n"
              + server.log_tail(80))


_SERVER_KEY = pytest.StashKey[ServerHandle]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and "triton_server" in getattr(item, "fixturenames", ()):
        handle = item.config.stash.get(_SERVER_KEY, None)
        if handle is not None:
            report.sections.append(("tritonserver log (tail)", handle.server.log_tail(60)))
    return report


# ---------------------------------------------------------------- gRPC streaming helper


@dataclass
class Reply:
    """One response of a stream: its outputs, whether it was final, or its error."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    final: bool = False
    error: str | None = None
    arrived: float = 0.0

    def text(self) -> str:
        arr = self.outputs.get("TEXT")
        return "" if arr is None else b"".join(arr.reshape(-1).tolist()).decode()

    def scalar(self, name: str) -> Any:
        value = self.outputs[name].reshape(-1)[0]
        return value.decode() if isinstance(value, bytes) else value.item()


_OUTPUTS = ("TEXT", "POINTS", "BOXES", "SVG_PATH", "FINISH_REASON", "NUM_INPUT_TOKENS", "NUM_OUTPUT_TOKENS")


def build_inputs(skill: str | None, image: bytes | None, prompt: str | None = None,
                 **settings: Any) -> list[Any]:
    """tritonclient InferInputs; ``settings`` keys are input names in lower case, values
    either Python values (typed per the model config) or ``(numpy array, triton type)``."""
    import tritonclient.grpc as grpcclient

    types = {"length": ("LENGTH", np.object_, "BYTES"), "max_tokens": ("MAX_TOKENS", np.int32, "INT32"),
             "temperature": ("TEMPERATURE", np.float32, "FP32"), "top_p": ("TOP_P", np.float32, "FP32"),
             "max_objects": ("MAX_OBJECTS", np.int32, "INT32"), "stream": ("STREAM", np.bool_, "BOOL")}
    inputs = []

    def add(name: str, array: np.ndarray, triton_type: str) -> None:
        tensor = grpcclient.InferInput(name, list(array.shape), triton_type)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    if skill is not None:
        add("SKILL", np.array([skill.encode()], dtype=np.object_), "BYTES")
    if image is not None:
        add("IMAGE", np.array([image], dtype=np.object_), "BYTES")
    if prompt is not None:
        add("PROMPT", np.array([prompt.encode()], dtype=np.object_), "BYTES")
    for key, value in settings.items():
        if value is None:
            continue
        name, dtype, triton_type = types[key]
        if isinstance(value, tuple):
            add(name, value[0], value[1])
        else:
            add(name, np.array([value.encode() if isinstance(value, str) else value], dtype=dtype), triton_type)
    return inputs


class Stream:
    """One gRPC bidirectional stream (sync tritonclient) collecting replies into a queue."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.client.start_stream(callback=self._on_reply)

    def _on_reply(self, result: Any, error: Any) -> None:
        now = time.perf_counter()
        if error is not None:
            self.replies.put(Reply(final=True, error=str(error), arrived=now))
            return
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
        self.replies.put(Reply(outputs=outputs, final=final, arrived=now))

    def send(self, inputs: list[Any], request_id: str = "") -> None:
        import tritonclient.grpc as grpcclient

        outputs = [grpcclient.InferRequestedOutput(name) for name in _OUTPUTS]
        self.client.async_stream_infer(MODEL, inputs, request_id=request_id, outputs=outputs,
                                       enable_empty_final_response=True)

    def collect(self, timeout: float = 60.0) -> list[Reply]:
        """Replies of one request until its final one (or error)."""
        replies: list[Reply] = []
        deadline = time.monotonic() + timeout
        while not replies or not replies[-1].final:
            replies.append(self.replies.get(timeout=max(0.1, deadline - time.monotonic())))
        return replies

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def run_request(url: str, skill: str | None, image: bytes | None, prompt: str | None = None,
                timeout: float = 60.0, **settings: Any) -> list[Reply]:
    """Send one request on a fresh stream and return all its replies."""
    stream = Stream(url)
    try:
        stream.send(build_inputs(skill, image, prompt, **settings))
        return stream.collect(timeout)
    finally:
        stream.close()


@dataclass
class Caller:
    """The e2e tests' way to talk to the session's server over gRPC streaming."""

    url: str

    def run(self, skill: str | None, image: bytes | None, prompt: str | None = None,
            timeout: float = 60.0, **settings: Any) -> list[Reply]:
        return run_request(self.url, skill, image, prompt, timeout=timeout, **settings)

    def stream(self) -> Stream:
        return Stream(self.url)


@pytest.fixture
def moondream(triton_server: ServerHandle) -> Caller:
    """A caller bound to the session's server."""
    return Caller(triton_server.grpc_url)
