"""Triton-free half of the moondream adapter: tensors in, tensors out, configuration.

Everything here takes and returns numpy arrays and plain values, so it is unit-tested
without a server; ``model.py`` only wraps these arrays into ``pb_utils`` objects.
Error messages start with the input's name (``"PROMPT: ..."``); the adapter prefixes
the error code (``"INVALID_ARG: PROMPT: ..."``) because gRPC streaming drops Triton's codes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moonpipe.config import EngineConfig
from moonpipe.errors import EngineError, InvalidRequest, raise_limit_hint
from moonpipe.request import Box, Delta, Point, Request, Result

__all__ = [
    "ADAPTER_DEFAULTS",
    "CHECKPOINT_ENV",
    "INPUTS",
    "AdapterConfig",
    "InputSpec",
    "PendingDelta",
    "adapter_config_from_parameters",
    "engine_config_from_parameters",
    "error_message",
    "final_outputs",
    "parse_request",
    "read_parameters",
    "stream_outputs",
]

CHECKPOINT_ENV = "MOONPIPE_CHECKPOINT"
# A checkpoint given by name (no "/") is a folder here, relative to the model repository:
# Triton shows config.pbtxt to every client (/v2/models/moondream/config), so the file
# names the checkpoint and the path stays out of it (or comes from MOONPIPE_CHECKPOINT).
CHECKPOINTS_DIR = Path("..") / "checkpoints"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input of the model: its Triton type, the numpy kinds accepted, whether required."""

    name: str
    triton_type: str
    kinds: str  # numpy dtype kinds accepted: "O"/"S" bytes, "i" int, "f" float, "b" bool
    required: bool = False


INPUTS: tuple[InputSpec, ...] = (
    InputSpec("SKILL", "STRING", "OS", required=True),
    InputSpec("IMAGE", "STRING", "OS", required=True),
    InputSpec("PROMPT", "STRING", "OS"),
    InputSpec("LENGTH", "STRING", "OS"),
    InputSpec("MAX_TOKENS", "INT32", "i"),
    InputSpec("TEMPERATURE", "FP32", "f"),
    InputSpec("TOP_P", "FP32", "f"),
    InputSpec("MAX_OBJECTS", "INT32", "i"),
    InputSpec("STREAM", "BOOL", "b"),
)


def _scalar(spec: InputSpec, array: np.ndarray) -> Any:
    if array.dtype.kind not in spec.kinds:
        raise InvalidRequest(f"{spec.name}: expected {spec.triton_type}, got numpy dtype {array.dtype}")
    if array.size != 1:
        raise InvalidRequest(f"{spec.name}: expected one element (shape [1]), got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if spec.triton_type == "STRING":
        raw = value if isinstance(value, bytes) else str(value).encode()
        try:
            return raw.decode("utf-8") if spec.name != "IMAGE" else raw
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"{spec.name}: not valid UTF-8 ({exc.reason})") from exc
    if spec.triton_type == "BOOL":
        return bool(value)
    if spec.triton_type == "INT32":
        return int(value)
    return float(value)


def parse_request(arrays: Mapping[str, np.ndarray | None], request_id: str,
                  max_image_bytes: int) -> Request:
    """Build a validated :class:`Request` from the request's input arrays.

    ``arrays`` maps input name to its numpy array (absent or ``None`` = not sent).
    Raises :class:`InvalidRequest` naming the input: missing required input, wrong type or
    shape, non-UTF-8 text, empty or oversized image, unknown skill, out-of-range setting.
    Decoding the image and counting prompt tokens are left to ``Engine.submit``.
    """
    known = {spec.name for spec in INPUTS}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: unknown input; expected {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for spec in INPUTS:
        array = arrays.get(spec.name)
        if array is None:
            if spec.required:
                raise InvalidRequest(f"{spec.name}: missing required input")
            continue
        values[spec.name] = _scalar(spec, np.asarray(array))
    image: bytes = values["IMAGE"]
    if len(image) == 0:
        raise InvalidRequest("IMAGE: empty image; send the encoded file bytes (JPEG, PNG, WebP, GIF)")
    if len(image) > max_image_bytes:
        raise InvalidRequest(f"IMAGE: {len(image)} bytes is over the limit of {max_image_bytes} bytes; send "
                             f"it smaller (JPEG, fewer pixels), {raise_limit_hint('max_image_bytes')}")
    return Request(
        request_id=request_id,
        skill=values["SKILL"].strip().lower(),
        image=image,
        prompt=values.get("PROMPT", ""),
        length=values.get("LENGTH", "normal") or "normal",
        max_tokens=values.get("MAX_TOKENS"),
        temperature=values.get("TEMPERATURE"),
        top_p=values.get("TOP_P"),
        max_objects=values.get("MAX_OBJECTS"),
        stream=values.get("STREAM", False),
    )


def error_message(error: BaseException) -> str:
    """``"CODE: message"`` for a client; the code survives gRPC streaming this way."""
    code = error.code if isinstance(error, EngineError) else "INTERNAL"
    text = str(error) or type(error).__name__
    return text if text.startswith(f"{code}: ") else f"{code}: {text}"


# ---------------------------------------------------------------- outputs


def _points(points: Sequence[Point]) -> np.ndarray:
    return np.array([[p.x, p.y] for p in points], dtype=np.float32).reshape(-1, 2)  # (N, 2)


def _boxes(boxes: Sequence[Box]) -> np.ndarray:
    rows = [[b.x_min, b.y_min, b.x_max, b.y_max] for b in boxes]
    return np.array(rows, dtype=np.float32).reshape(-1, 4)  # (N, 4)


def _text(text: str) -> np.ndarray:
    return np.array([text.encode("utf-8")], dtype=np.object_)  # (1,)


class PendingDelta:
    """Streamed output of one request not sent yet; consecutive deltas coalesce here."""

    __slots__ = ("boxes", "count", "points", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.points: list[Point] = []
        self.boxes: list[Box] = []
        self.count = 0  # deltas merged

    def add(self, delta: Delta) -> None:
        self.text.append(delta.text)
        self.points.extend(delta.points)
        self.boxes.extend(delta.boxes)
        self.count += 1

    def __bool__(self) -> bool:
        return self.count > 0


def stream_outputs(pending: PendingDelta) -> dict[str, np.ndarray]:
    """A streamed (non-final) response: the coalesced TEXT delta and new POINTS/BOXES."""
    return {
        "TEXT": _text("".join(pending.text)),
        "POINTS": _points(pending.points),
        "BOXES": _boxes(pending.boxes),
    }


def final_outputs(result: Result, pending: PendingDelta | None, stream: bool) -> dict[str, np.ndarray]:
    """The FINAL response. Streaming: the not-yet-sent delta (text/points/boxes already
    streamed are not repeated); otherwise the whole result. Always the finish reason and
    token counts, so a client can recognise the last response by ``FINISH_REASON``."""
    if stream:
        rest = pending or PendingDelta()
        outputs = stream_outputs(rest)
    else:
        outputs = {
            "TEXT": _text(result.text),
            "POINTS": _points(result.points),
            "BOXES": _boxes(result.boxes),
        }
    outputs["SVG_PATH"] = _text(result.svg_path)
    outputs["FINISH_REASON"] = _text(result.finish_reason)
    outputs["NUM_INPUT_TOKENS"] = np.array([result.num_input_tokens], dtype=np.int32)
    outputs["NUM_OUTPUT_TOKENS"] = np.array([result.num_output_tokens], dtype=np.int32)
    return outputs


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """Settings of the adapter itself (not the engine)."""

    cancel_check_interval_ms: int = 100  # how often a live request's is_cancelled() is polled
    stats_interval_ms: int = 500  # how often engine gauges are exported
    shutdown_timeout_s: int = 10
    shutdown_drain_s: int = 2  # on SIGTERM: how long in-flight requests may finish
    handle_stop_signals: int = 1  # 0: leave SIGTERM to Triton (in-process unit tests)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "handle_stop_signals":
                if getattr(self, f.name) not in (0, 1):
                    raise ValueError("config.pbtxt parameter 'handle_stop_signals' must be 0 or 1")
            elif getattr(self, f.name) <= 0:
                raise ValueError(f"config.pbtxt parameter {f.name!r} must be positive")


ADAPTER_DEFAULTS = AdapterConfig()


def read_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """``parameters { key: ... value: { string_value: ... } }`` as a plain dict."""
    raw = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


def _convert(name: str, kind: str, text: str) -> Any:
    text = text.strip()
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config.pbtxt parameter {name!r}: expected true or false, got {text!r}")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"config.pbtxt parameter {name!r}: expected an integer, got {text!r}") from None
    return text


def _resolve_device(device: str, dtype: str) -> tuple[str, str]:
    if device == "auto" or dtype == "auto":
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            on_cuda = device.startswith("cuda")
            dtype = "bfloat16" if on_cuda and torch.cuda.is_bf16_supported() else (
                "float16" if on_cuda else "float32")
    return device, dtype


def engine_config_from_parameters(params: Mapping[str, str], repository_root: Path,
                                  env: Mapping[str, str] | None = None) -> EngineConfig:
    """Build the :class:`EngineConfig` from ``config.pbtxt`` parameters.

    Parameter names are ``EngineConfig`` field names (plus the adapter's own, see
    :class:`AdapterConfig`); an unknown name is an error, so a typo cannot pass silently.
    ``checkpoint`` is a name (a folder of ``checkpoints/`` beside the model repository) or
    a path, absolute or relative to the model repository root; ``MOONPIPE_CHECKPOINT`` in
    the environment overrides it. ``device``/``dtype`` accept ``auto``.
    Raises ``ValueError`` naming the parameter.
    """
    env = os.environ if env is None else env
    engine_fields = {f.name: str(f.type) for f in dataclasses.fields(EngineConfig)}
    adapter_fields = {f.name for f in dataclasses.fields(AdapterConfig)}
    unknown = sorted(set(params) - set(engine_fields) - adapter_fields)
    if unknown:
        raise ValueError(
            f"config.pbtxt parameter {unknown[0]!r} is unknown; known: {', '.join(sorted(engine_fields))}"
        )
    kwargs: dict[str, Any] = {
        name: _convert(name, engine_fields[name], value)
        for name, value in params.items() if name in engine_fields
    }
    checkpoint = env.get(CHECKPOINT_ENV) or kwargs.get("checkpoint", "")
    if not checkpoint:
        raise ValueError(f"config.pbtxt parameter 'checkpoint' is empty and {CHECKPOINT_ENV} is not set")
    path = Path(os.path.expandvars(os.path.expanduser(checkpoint)))
    named = not env.get(CHECKPOINT_ENV) and "/" not in checkpoint and checkpoint not in (".", "..")
    if named:
        path = CHECKPOINTS_DIR / checkpoint
    kwargs["checkpoint"] = str(path if path.is_absolute() else (repository_root / path).resolve())
    kwargs["device"], kwargs["dtype"] = _resolve_device(
        kwargs.get("device", "cpu") or "cpu", kwargs.get("dtype", "float32") or "float32")
    try:
        return EngineConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"config.pbtxt parameters: {exc}") from exc


def adapter_config_from_parameters(params: Mapping[str, str]) -> AdapterConfig:
    """The adapter's own settings from ``config.pbtxt`` parameters (others are ignored)."""
    names = {f.name for f in dataclasses.fields(AdapterConfig)}
    return AdapterConfig(**{k: _convert(k, "int", v) for k, v in params.items() if k in names})
