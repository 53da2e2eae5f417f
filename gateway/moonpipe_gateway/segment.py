"""Segment's SVG path in Moondream's REST coordinates: relative to the bounding box.

moonpipe's engine answers with the path in image coordinates ([0, 1] across the image);
Moondream's API gives it relative to ``bbox`` ([0, 1] across the box), so that
``X = x_min + px * (x_max - x_min)``. :func:`box_relative_path` maps the engine's final
path; :class:`PathDeltaScaler` maps the streamed raw text, whose numbers are on the
model's 960-unit box viewbox, one delta at a time (so ``path_delta`` chunks are in the
same box-relative units as the final path).
"""

from __future__ import annotations

import re

from moonpipe_client import Box

__all__ = ["VIEWBOX_UNITS", "PathDeltaScaler", "box_relative_path", "format_number"]

VIEWBOX_UNITS = 960.0  # the model writes path coordinates on a 960-unit box viewbox
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PAIR = re.compile(rf"({_NUMBER.pattern})\s*,\s*({_NUMBER.pattern})")
_TRAILING_NUMBER = re.compile(r"[-+.\deE]*$")


def format_number(value: float) -> str:
    """Four decimals without trailing zeros: 0.125, 0.5, 1, 0."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def box_relative_path(path: str, box: Box) -> str:
    """``path`` ("M x,y L x,y ..." in image coordinates, as the engine sends it) with
    every x, y pair made relative to ``box``; a degenerate box side maps to 0."""
    width = box.x_max - box.x_min
    height = box.y_max - box.y_min

    def pair(match: re.Match[str]) -> str:
        x = (float(match.group(1)) - box.x_min) / width if width > 0 else 0.0
        y = (float(match.group(2)) - box.y_min) / height if height > 0 else 0.0
        return f"{format_number(x)},{format_number(y)}"

    return _PAIR.sub(pair, path)


def _scale(text: str) -> str:
    return _NUMBER.sub(lambda m: format_number(float(m.group()) / VIEWBOX_UNITS), text)


class PathDeltaScaler:
    """Rescales streamed path text from the 960-unit viewbox to [0, 1] across the box.

    A number may be split across deltas, so the trailing run of number characters is held
    back until a separator or command follows it (or :meth:`flush` at the end).
    """

    def __init__(self) -> None:
        self._held = ""

    def feed(self, delta: str) -> str:
        """The rescaled text that is complete after ``delta`` (may be empty)."""
        text = self._held + delta
        match = _TRAILING_NUMBER.search(text)
        cut = match.start() if match else len(text)
        self._held = text[cut:]
        return _scale(text[:cut])

    def flush(self) -> str:
        """The rest at the end of the stream (an incomplete number is dropped)."""
        held, self._held = self._held, ""
        return _scale(held) if _NUMBER.fullmatch(held) else ""
