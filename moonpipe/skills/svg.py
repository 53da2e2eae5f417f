"""SVG path text: parse, validate, map from the 960-unit box viewbox into the image.

Accepted: commands ``M L C Q Z`` in either case (lower case = relative), numbers with
an optional sign, decimals and exponent, separated by whitespace and/or commas, and
SVG's implicit command repetition (extra numbers after ``M`` are line-to's). The parsed
path is absolute: every command is upper case with absolute coordinates, so mapping it
into the image is a per-coordinate affine map.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from moonpipe.request import Box

__all__ = [
    "VIEWBOX_UNITS",
    "MalformedPath",
    "PathCommand",
    "format_path",
    "parse_path",
    "path_to_image",
    "scale_path",
]

VIEWBOX_UNITS = 960.0
_NUM_ARGS = {"M": 2, "L": 2, "C": 6, "Q": 4, "Z": 0}
_TOKEN = re.compile(
    r"(?P<cmd>[MmLlCcQqZz])"
    r"|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<sep>[\s,]+)"
)
_NUMBER_START = re.compile(r"[-+]?\.?")


class MalformedPath(ValueError):
    """The path text is not a valid ``M/L/C/Q/Z`` SVG path; the message says where."""


@dataclass(frozen=True, slots=True)
class PathCommand:
    """One absolute command: ``command`` in ``MLCQZ``, ``coords`` as x, y pairs."""

    command: str
    coords: tuple[float, ...]


def _lex(text: str, allow_truncated: bool) -> list[tuple[int, str, float]]:
    """(offset, command letter or "", number) items; raises on any other character."""
    items: list[tuple[int, str, float]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if allow_truncated and _NUMBER_START.fullmatch(text, pos):
                break  # a number cut right after its sign / point
            raise MalformedPath(f"unexpected character {text[pos]!r} at offset {pos}")
        if m.lastgroup == "cmd":
            items.append((pos, m.group(), 0.0))
        elif m.lastgroup == "num":
            value = float(m.group())
            if not math.isfinite(value):
                raise MalformedPath(f"number {m.group()!r} at offset {pos} is not finite")
            items.append((pos, "", value))
        pos = m.end()
    return items


def parse_path(text: str, *, allow_truncated: bool = False) -> list[PathCommand]:
    """Parse ``text`` into absolute commands.

    Raises ``MalformedPath`` when the text is empty, does not start with ``M``, holds an
    unknown character, or a command has the wrong number of numbers. With
    ``allow_truncated`` (a path cut by max_tokens) an incomplete last command is dropped
    instead of raising, and an empty result is allowed.
    """
    items = _lex(text, allow_truncated)
    if not items:
        if allow_truncated:
            return []
        raise MalformedPath("empty path")
    if items[0][1] not in ("M", "m"):
        raise MalformedPath("a path must start with a moveto command (M)")
    out: list[PathCommand] = []
    cx = cy = 0.0  # current point
    sx = sy = 0.0  # start of the current subpath (Z returns here)
    i = 0
    letter = ""
    while i < len(items):
        offset, cmd, _ = items[i]
        if cmd:
            letter = cmd
            i += 1
            if letter in ("Z", "z"):
                out.append(PathCommand("Z", ()))
                cx, cy = sx, sy
                continue
        elif letter in ("Z", "z"):
            raise MalformedPath(f"number at offset {offset} after Z (Z takes no numbers)")
        # One group of numbers for `letter` (the command itself or an implicit repeat).
        upper = letter.upper()
        n = _NUM_ARGS[upper]
        values = [v for _, c, v in items[i:i + n] if not c]
        if len(values) < n or any(c for _, c, _ in items[i:i + n]):
            if allow_truncated and i + len(values) == len(items):
                break
            raise MalformedPath(
                f"command {letter} at offset {offset} needs {n} numbers, got {len(values)}"
            )
        i += n
        if letter.islower():  # relative: every pair is an offset from the current point
            values = [v + (cx if j % 2 == 0 else cy) for j, v in enumerate(values)]
        cx, cy = values[-2], values[-1]
        if upper == "M":
            sx, sy = cx, cy
            out.append(PathCommand("M", tuple(values)))
            letter = "L" if letter == "M" else "l"  # SVG: extra pairs after M are lineto
        else:
            out.append(PathCommand(upper, tuple(values)))
    if not out and not allow_truncated:
        raise MalformedPath("empty path")
    return out


def _clamp01(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def scale_path(commands: list[PathCommand], box: Box, units: float = VIEWBOX_UNITS) -> list[PathCommand]:
    """Map viewbox coordinates (0..``units`` across the box) into image-relative [0, 1].

    ``x -> x_min + x / units * (x_max - x_min)`` (same for y); results are clamped to
    [0, 1] so every coordinate stays inside the image.
    """
    sx = (box.x_max - box.x_min) / units
    sy = (box.y_max - box.y_min) / units
    out = []
    for cmd in commands:
        coords = tuple(
            _clamp01(box.x_min + v * sx) if j % 2 == 0 else _clamp01(box.y_min + v * sy)
            for j, v in enumerate(cmd.coords)
        )
        out.append(PathCommand(cmd.command, coords))
    return out


def format_path(commands: list[PathCommand], decimals: int = 4) -> str:
    """``"M 0.1200,0.3400 L 0.5000,0.6000 Z"``: one space between items, pairs with a comma."""
    parts: list[str] = []
    for cmd in commands:
        parts.append(cmd.command)
        c = cmd.coords
        parts.extend(f"{c[j]:.{decimals}f},{c[j + 1]:.{decimals}f}" for j in range(0, len(c), 2))
    return " ".join(parts)


def path_to_image(text: str, box: Box, *, allow_truncated: bool = False) -> str:
    """Parse a generated path and return it in image-relative coordinates (formatted)."""
    return format_path(scale_path(parse_path(text, allow_truncated=allow_truncated), box))
