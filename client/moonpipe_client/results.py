"""Typed results of the five skills and the parsing of the server's output tensors.

Each result is a frozen dataclass with ``finish_reason`` (``stop``, ``length``,
``cancelled``, ``error``) and token counts (``to_record()`` adds them to the JSON), and
``to_dict()`` gives the JSON shape Moondream users know: ``{"caption": ...}``, ``{"answer": ...}``,
``{"points": [{"x", "y"}]}``, ``{"objects": [{"x_min", "y_min", "x_max", "y_max"}]}``,
``{"segments": [{"path", "bbox": {...}}]}``. Coordinates are fractions of the image
width/height, in [0, 1].

The server answers one request with one or more responses; :class:`Chunk` is one parsed
response and :class:`ResultBuilder` folds them into the final result. When streaming,
``TEXT`` is a delta and ``POINTS``/``BOXES`` hold only newly completed objects; without
streaming one response holds everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moonpipe_client.errors import ServerError

__all__ = [
    "SKILLS",
    "Answer",
    "Box",
    "Caption",
    "Chunk",
    "Detection",
    "Point",
    "Points",
    "Result",
    "ResultBuilder",
    "Segment",
    "parse_chunk",
]

SKILLS = ("caption", "query", "point", "detect", "segment")


@dataclass(frozen=True, slots=True)
class Point:
    """A point as fractions of the image width (``x``) and height (``y``)."""

    x: float
    y: float

    def to_dict(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y}


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box as fractions of the image size (``x_min <= x_max``, ``y_min <= y_max``)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def to_dict(self) -> dict[str, float]:
        return {"x_min": self.x_min, "y_min": self.y_min, "x_max": self.x_max, "y_max": self.y_max}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Finished:
    """Fields every result shares: why generation ended and how many tokens it used."""

    finish_reason: str = "stop"
    num_input_tokens: int = 0
    num_output_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The result in Moondream's JSON shape (each skill's own)."""
        raise NotImplementedError

    def to_record(self) -> dict[str, Any]:
        """``to_dict()`` plus ``finish_reason``, ``num_input_tokens`` and ``num_output_tokens``
        (what ``moonpipe-client --json`` prints and a batch writes per image)."""
        return {**self.to_dict(), "finish_reason": self.finish_reason,
                "num_input_tokens": self.num_input_tokens, "num_output_tokens": self.num_output_tokens}


@dataclass(frozen=True, slots=True, kw_only=True)
class Caption(_Finished):
    """The result of ``caption``."""

    caption: str

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption}


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer(_Finished):
    """The result of ``query``."""

    answer: str

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer}


@dataclass(frozen=True, slots=True, kw_only=True)
class Points(_Finished):
    """The result of ``point``: every instance of the object as a point."""

    points: tuple[Point, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"points": [p.to_dict() for p in self.points]}


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection(_Finished):
    """The result of ``detect``: every instance of the object as a box."""

    objects: tuple[Box, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [b.to_dict() for b in self.objects]}


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment(_Finished):
    """The result of ``segment``: the object's outline as an SVG path and its bounding box.

    ``path`` uses image-relative coordinates (see the server's segment skill); it is empty
    and ``bbox`` is None when the object was not found.
    """

    path: str = ""
    bbox: Box | None = None

    def to_dict(self) -> dict[str, Any]:
        if not self.path and self.bbox is None:
            return {"segments": []}
        segment: dict[str, Any] = {"path": self.path}
        if self.bbox is not None:
            segment["bbox"] = self.bbox.to_dict()
        return {"segments": [segment]}


Result = Caption | Answer | Points | Detection | Segment


@dataclass(frozen=True, slots=True)
class Chunk:
    """One parsed server response; ``None`` fields were absent from it."""

    text: str = ""
    points: tuple[Point, ...] = ()
    boxes: tuple[Box, ...] = ()
    svg_path: str | None = None
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    final: bool = False


def _scalar_str(array: np.ndarray | None) -> str | None:
    if array is None or array.size == 0:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _scalar_int(array: np.ndarray | None) -> int | None:
    if array is None or array.size == 0:
        return None
    return int(array.reshape(-1)[0])


def _rows(array: np.ndarray | None, width: int, name: str) -> np.ndarray:
    if array is None or array.size == 0:
        return np.zeros((0, width), dtype=np.float32)
    if array.size % width != 0:
        raise ServerError(f"the server sent {name} with shape {array.shape}; expected (N, {width})")
    return array.reshape(-1, width).astype(np.float32)  # (N, width)


def _short_float(value: np.floating[Any]) -> float:
    """A float32 as the shortest decimal that round-trips (0.1, not 0.10000000149011612)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def parse_chunk(get: Callable[[str], np.ndarray | None], final: bool) -> Chunk:
    """Parse one response; ``get(name)`` returns an output tensor or None when absent."""
    points = tuple(Point(_short_float(x), _short_float(y)) for x, y in _rows(get("POINTS"), 2, "POINTS"))
    boxes = tuple(Box(*(_short_float(v) for v in row)) for row in _rows(get("BOXES"), 4, "BOXES"))
    return Chunk(
        text=_scalar_str(get("TEXT")) or "",
        points=points,
        boxes=boxes,
        svg_path=_scalar_str(get("SVG_PATH")),
        finish_reason=_scalar_str(get("FINISH_REASON")),
        num_input_tokens=_scalar_int(get("NUM_INPUT_TOKENS")),
        num_output_tokens=_scalar_int(get("NUM_OUTPUT_TOKENS")),
        final=final,
    )


@dataclass(slots=True)
class ResultBuilder:
    """Folds the chunks of one request into its typed result."""

    skill: str
    stream: bool
    text_parts: list[str] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    svg_path: str = ""
    finish_reason: str | None = None
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    done: bool = False

    def add(self, chunk: Chunk) -> None:
        if self.stream:
            self.text_parts.append(chunk.text)
        elif chunk.text:
            self.text_parts = [chunk.text]  # not streaming: TEXT is the whole answer
        self.points.extend(chunk.points)
        self.boxes.extend(chunk.boxes)
        if chunk.svg_path is not None:
            self.svg_path = chunk.svg_path
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.num_input_tokens is not None:
            self.num_input_tokens = chunk.num_input_tokens
        if chunk.num_output_tokens is not None:
            self.num_output_tokens = chunk.num_output_tokens
        self.done = self.done or chunk.final

    def build(self, finish_reason: str | None = None) -> Result:
        """The result so far; ``finish_reason`` overrides the server's (a stream closed early)."""
        common: dict[str, Any] = {
            "finish_reason": finish_reason or self.finish_reason or "stop",
            "num_input_tokens": self.num_input_tokens,
            "num_output_tokens": self.num_output_tokens,
        }
        text = "".join(self.text_parts)
        if self.skill == "caption":
            return Caption(caption=text, **common)
        if self.skill == "query":
            return Answer(answer=text, **common)
        if self.skill == "point":
            return Points(points=tuple(self.points), **common)
        if self.skill == "detect":
            return Detection(objects=tuple(self.boxes), **common)
        if self.skill == "segment":
            bbox = self.boxes[0] if self.boxes else None
            return Segment(path=self.svg_path, bbox=bbox, **common)
        raise ValueError(f"unknown skill {self.skill!r}; expected one of {', '.join(SKILLS)}")
