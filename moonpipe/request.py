"""What a caller hands the engine and what it gets back.

``Request`` is validated at construction (``InvalidRequest`` names the bad field), so the
scheduler never sees a malformed one. Results are plain frozen dataclasses; the Triton
adapter maps them to typed output tensors and the client package mirrors them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from moonpipe.errors import EngineError, InvalidRequest

__all__ = [
    "SKILLS",
    "Box",
    "Delta",
    "FinishReason",
    "Point",
    "Request",
    "Result",
    "Sink",
    "Timings",
]

SKILLS = ("caption", "query", "point", "detect", "segment")
CAPTION_LENGTHS = ("short", "normal", "long")
MAX_TOKENS_LIMIT = 2048
MAX_OBJECTS_LIMIT = 256


class FinishReason:
    """Why a request ended (the ``FINISH_REASON`` output)."""

    STOP = "stop"  # eos, or the object list ended
    LENGTH = "length"  # max_tokens, max_objects or the context ran out
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Request:
    """One skill invocation.

    ``image`` holds the encoded file bytes (JPEG/PNG/WebP/GIF...). ``temperature``/``top_p``
    of ``None`` mean the skill's default; ``max_objects`` applies to point/detect/segment.
    """

    request_id: str
    skill: str
    image: bytes
    prompt: str = ""
    length: str = "normal"
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_objects: int | None = None
    stream: bool = False

    def __post_init__(self) -> None:
        if self.skill not in SKILLS:
            raise InvalidRequest(f"SKILL: unknown skill {self.skill!r}; expected one of {', '.join(SKILLS)}")
        if not isinstance(self.image, (bytes, bytearray, memoryview)) or len(self.image) == 0:
            raise InvalidRequest("IMAGE: empty image; send the encoded file bytes (JPEG, PNG, WebP, GIF)")
        if self.skill == "caption":
            if self.length not in CAPTION_LENGTHS:
                raise InvalidRequest(f"LENGTH: must be one of {', '.join(CAPTION_LENGTHS)}, got {self.length!r}")
        elif not self.prompt.strip():
            what = "question" if self.skill == "query" else "object name"
            raise InvalidRequest(f"PROMPT: the {self.skill} skill needs a non-empty {what}")
        if self.max_tokens is not None and not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidRequest(f"MAX_TOKENS: must be in [1, {MAX_TOKENS_LIMIT}], got {self.max_tokens}")
        if self.max_objects is not None and not 1 <= self.max_objects <= MAX_OBJECTS_LIMIT:
            raise InvalidRequest(f"MAX_OBJECTS: must be in [1, {MAX_OBJECTS_LIMIT}], got {self.max_objects}")
        if self.temperature is not None and (
            not math.isfinite(self.temperature) or not 0.0 <= self.temperature <= 5.0
        ):
            raise InvalidRequest(f"TEMPERATURE: must be a finite number in [0, 5], got {self.temperature}")
        if self.top_p is not None and (not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise InvalidRequest(f"TOP_P: must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True, slots=True)
class Point:
    """A point in image-relative coordinates, [0, 1] on both axes."""

    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Box:
    """A box in image-relative coordinates, clamped to [0, 1]."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True, slots=True)
class Delta:
    """A streamed increment: new text and/or newly completed objects."""

    text: str = ""
    points: tuple[Point, ...] = ()
    boxes: tuple[Box, ...] = ()


@dataclass(slots=True)
class Timings:
    """Wall-clock marks of one request (``time.perf_counter`` seconds)."""

    submitted: float = 0.0
    admitted: float = 0.0
    first_output: float = 0.0
    finished: float = 0.0
    output_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return max(0.0, self.first_output - self.submitted) if self.first_output else 0.0

    @property
    def queue_time(self) -> float:
        return max(0.0, self.admitted - self.submitted) if self.admitted else 0.0


@dataclass(frozen=True, slots=True)
class Result:
    """The final answer of one request (exactly one per request, unless it errored)."""

    request_id: str
    skill: str
    finish_reason: str
    text: str = ""
    points: tuple[Point, ...] = ()
    boxes: tuple[Box, ...] = ()
    svg_path: str = ""
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    timings: Timings | None = None
    error: str = ""  # why finish_reason is "error" when the output itself was unusable
    token_ids: tuple[int, ...] = ()  # generated text token ids (eos excluded)


class Sink(Protocol):
    """Where the engine delivers a request's output (called from the engine's output thread).

    For every submitted request exactly one of ``on_result`` / ``on_error`` is called, once,
    after any number of ``on_delta`` calls (deltas only when ``Request.stream`` is set).
    Implementations must be quick and must not raise.
    """

    def on_delta(self, request_id: str, delta: Delta) -> None: ...

    def on_result(self, request_id: str, result: Result) -> None: ...

    def on_error(self, request_id: str, error: EngineError) -> None: ...
