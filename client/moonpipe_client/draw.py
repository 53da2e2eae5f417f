"""Pictures of results: points as dots, boxes as rectangles, segments as outlines (Pillow).

Coordinates in results are fractions of the image size; they are scaled to pixels here.
A segment's SVG path is read by :func:`parse_svg_path` (M/L/H/V/C/S/Q/T/A/Z, absolute and
relative; curves are sampled into short line pieces). Paths whose coordinates lie in
[0, 1] are image-relative; larger coordinates are taken as the 960-unit viewbox of the
segment's bounding box (Moondream's raw segment output).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from moonpipe_client.images import ImageInput, open_image
from moonpipe_client.results import Box, Detection, Points, Result, Segment

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BOX_COLOR",
    "OUTLINE_COLOR",
    "POINT_COLOR",
    "draw_result",
    "parse_svg_path",
    "segment_outline",
]

POINT_COLOR = (255, 40, 40)
BOX_COLOR = (40, 120, 255)
OUTLINE_COLOR = (40, 220, 80)
_VIEWBOX = 960.0
_CURVE_STEPS = 12
_TOKEN_RE = re.compile(r"[MmLlHhVvCcSsQqTtAaZz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NUM_ARGS = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "A": 7, "Z": 0}

XY = tuple[float, float]


def _bezier(p0: XY, controls: Sequence[XY], p_end: XY) -> list[XY]:
    nodes = [p0, *controls, p_end]
    out: list[XY] = []
    for step in range(1, _CURVE_STEPS + 1):
        t = step / _CURVE_STEPS
        pts = nodes
        while len(pts) > 1:  # de Casteljau
            pts = [((1 - t) * a[0] + t * b[0], (1 - t) * a[1] + t * b[1]) for a, b in pairwise(pts)]
        out.append(pts[0])
    return out


def parse_svg_path(path: str) -> list[list[XY]]:
    """The subpaths of an SVG path as polylines in the path's own units (closed ones repeat
    their first point at the end). Raises ``ValueError`` on malformed input."""
    tokens = _TOKEN_RE.findall(path)
    if "".join(_TOKEN_RE.sub("", path).split(",")).strip():
        raise ValueError(f"not an SVG path: {path[:60]!r}")
    polylines: list[list[XY]] = []
    current: list[XY] = []
    pos: XY = (0.0, 0.0)
    start: XY = (0.0, 0.0)
    last_control: XY | None = None
    command = ""
    i = 0
    while i < len(tokens):
        if tokens[i].isalpha():
            command = tokens[i]
            i += 1
            if command in "Zz":
                if current:
                    current.append(start)
                    polylines.append(current)
                current, pos, last_control = [], start, None
                continue
        elif not command or command in "Zz":
            raise ValueError(f"SVG path: number without a command at token {i}")
        upper = command.upper()
        count = _NUM_ARGS[upper]
        if i + count > len(tokens) or any(t.isalpha() for t in tokens[i:i + count]):
            raise ValueError(f"SVG path: command {command!r} needs {count} numbers")
        args = [float(t) for t in tokens[i:i + count]]
        i += count
        rel = command.islower()
        ox, oy = pos if rel else (0.0, 0.0)

        def at(k: int, ox: float = ox, oy: float = oy, args: list[float] = args) -> XY:
            return (args[k] + ox, args[k + 1] + oy)

        if upper == "M":
            if len(current) > 1:
                polylines.append(current)
            pos = start = at(0)
            current = [pos]
            command = "l" if rel else "L"  # extra pairs after M are line-tos
            last_control = None
            continue
        if not current:
            current = [pos]
        if upper == "L" or upper == "T" or upper == "A":
            end = at(5) if upper == "A" else at(0)
            points: list[XY] = [end]  # arcs and smooth quadratics: straight to the end point
        elif upper == "H":
            end = (args[0] + ox, pos[1])
            points = [end]
        elif upper == "V":
            end = (pos[0], args[0] + oy)
            points = [end]
        elif upper == "C":
            end = at(4)
            points = _bezier(pos, [at(0), at(2)], end)
            last_control = at(2)
        elif upper == "S":
            mirror = (2 * pos[0] - last_control[0], 2 * pos[1] - last_control[1]) if last_control else pos
            end = at(2)
            points = _bezier(pos, [mirror, at(0)], end)
            last_control = at(0)
        else:  # Q
            end = at(2)
            points = _bezier(pos, [at(0)], end)
            last_control = at(0)
        if upper not in "CSQ":
            last_control = None
        current.extend(points)
        pos = end
    if len(current) > 1:
        polylines.append(current)
    return polylines


def segment_outline(segment: Segment) -> list[list[XY]]:
    """The segment's outline as polylines in image-relative [0, 1] coordinates."""
    polylines = parse_svg_path(segment.path) if segment.path else []
    coords = [v for line in polylines for xy in line for v in xy]
    if not coords or (min(coords) >= -0.05 and max(coords) <= 1.05) or segment.bbox is None:
        return polylines
    box = segment.bbox  # coordinates on a 960-unit viewbox spanning the bounding box
    sx, sy = (box.x_max - box.x_min) / _VIEWBOX, (box.y_max - box.y_min) / _VIEWBOX
    return [[(box.x_min + x * sx, box.y_min + y * sy) for x, y in line] for line in polylines]


def _box_pixels(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    x0, x1 = sorted((box.x_min * width, box.x_max * width))
    y0, y1 = sorted((box.y_min * height, box.y_max * height))
    return x0, y0, x1, y1


def draw_result(image: ImageInput, result: Result, out: str | Path | None = None) -> Image.Image:
    """``image`` (any accepted input) with ``result`` drawn over it; saved as PNG to ``out``.

    Points are filled dots (``POINT_COLOR``, white rim), boxes rectangles (``BOX_COLOR``),
    segment outlines lines (``OUTLINE_COLOR``) with their box. Raises ``ValueError`` for
    text results (caption, answer), which have nothing to draw.
    """
    from PIL import ImageDraw

    if not isinstance(result, (Points, Detection, Segment)):
        raise ValueError(f"nothing to draw for a {type(result).__name__} result; "
                         "draw works with point, detect and segment results")
    canvas = open_image(image).copy()
    width, height = canvas.size
    line_width = max(2, round(min(width, height) / 200))
    radius = max(3, round(min(width, height) / 80))
    pen = ImageDraw.Draw(canvas)
    if isinstance(result, Points):
        for point in result.points:
            cx, cy = point.x * width, point.y * height
            pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=POINT_COLOR,
                        outline=(255, 255, 255), width=1)
    elif isinstance(result, Detection):
        for box in result.objects:
            pen.rectangle(_box_pixels(box, width, height), outline=BOX_COLOR, width=line_width)
    else:
        if result.bbox is not None:
            pen.rectangle(_box_pixels(result.bbox, width, height), outline=BOX_COLOR, width=1)
        for line in segment_outline(result):
            pen.line([(x * width, y * height) for x, y in line], fill=OUTLINE_COLOR,
                     width=line_width, joint="curve")
    if out is not None:
        canvas.save(out, format="PNG")
    return canvas
