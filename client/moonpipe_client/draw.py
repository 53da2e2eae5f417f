"""Pictures of results: points as dots, boxes as rectangles, segments as filled outlines,
each with a numbered tag (Pillow).

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
from typing import TYPE_CHECKING, Any

from moonpipe_client.images import ImageInput, open_image
from moonpipe_client.results import Box, Detection, Points, Result, Segment

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BOX_COLOR",
    "DARK_HALO",
    "FILL_ALPHA",
    "LIGHT_HALO",
    "OUTLINE_COLOR",
    "POINT_COLOR",
    "draw_result",
    "parse_svg_path",
    "segment_outline",
]

RGB = tuple[int, int, int]
POINT_COLOR: RGB = (255, 40, 40)
BOX_COLOR: RGB = (40, 120, 255)
OUTLINE_COLOR: RGB = (40, 220, 80)
DARK_HALO: RGB = (0, 0, 0)  # the edges around a stroke over light parts of the image
LIGHT_HALO: RGB = (255, 255, 255)  # ... over dark parts
FILL_ALPHA = 90  # of 255: how strongly a segment's inside is tinted
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


class _Pen:
    """Strokes and labels sized to the image: a coloured core between edges (a halo) that
    contrast with the image under the mark (dark on light areas, light on dark ones), so
    every mark shows on light, dark and same-coloured backgrounds."""

    def __init__(self, canvas: Image.Image) -> None:
        from PIL import ImageDraw, ImageFont

        self.canvas = canvas
        short_side = min(canvas.size)
        self.width = max(4, round(short_side / 100))  # the coloured core
        self.edge = max(2, self.width // 2)  # the halo on each side of it
        self.radius = max(4, round(short_side / 60))
        self.draw = ImageDraw.Draw(canvas)
        size = max(11, round(short_side / 30))
        try:
            self.font: Any = ImageFont.load_default(size=size)
        except (OSError, ValueError, TypeError):  # Pillow without FreeType: the fixed bitmap font
            self.font = ImageFont.load_default()

    def halo(self, area: tuple[float, float, float, float]) -> RGB:
        """The edge colour for a mark over ``area`` (x0, y0, x1, y1) of the image."""
        from PIL import ImageStat

        x0, y0, x1, y1 = (max(0, round(v)) for v in area)
        region = self.canvas.crop((x0, y0, max(x0 + 1, x1), max(y0 + 1, y1))).convert("L")
        return DARK_HALO if ImageStat.Stat(region).mean[0] > 110 else LIGHT_HALO

    def rectangle(self, box: tuple[float, float, float, float], color: RGB) -> None:
        x0, y0, x1, y1 = box
        e = self.edge
        halo = self.halo((x0 - e, y0 - e, x1 + e, y1 + e))
        self.draw.rectangle((x0 - e, y0 - e, x1 + e, y1 + e), outline=halo, width=self.width + 2 * e)
        self.draw.rectangle((x0, y0, x1, y1), outline=color, width=self.width)

    def line(self, points: list[XY], color: RGB) -> None:
        xs, ys = [x for x, _ in points], [y for _, y in points]
        halo = self.halo((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
        self.draw.line(points, fill=halo, width=self.width + 2 * self.edge, joint="curve")
        self.draw.line(points, fill=color, width=self.width, joint="curve")

    def dot(self, cx: float, cy: float, color: RGB) -> None:
        r, e = self.radius, self.edge
        halo = self.halo((cx - r - e, cy - r - e, cx + r + e, cy + r + e))
        self.draw.ellipse((cx - r - e, cy - r - e, cx + r + e, cy + r + e), fill=halo)
        self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)

    def label(self, text: str, x: float, y: float, color: RGB) -> None:
        """``text`` on a tag of ``color`` whose bottom-left corner is (x, y), kept inside the
        image (below ``y`` when there is no room above)."""
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.font)
        pad = max(2, self.edge)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        x = min(max(0.0, x), max(0.0, self.canvas.width - w))
        y = y - h if y - h >= 0 else min(y, max(0.0, self.canvas.height - h))
        self.draw.rectangle((x, y, x + w, y + h), fill=color, outline=self.halo((x, y, x + w, y + h)), width=1)
        ink = DARK_HALO if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else LIGHT_HALO
        self.draw.text((x + pad - left, y + pad - top), text, fill=ink, font=self.font)

    def fill(self, polygons: list[list[XY]], color: RGB) -> None:
        """Fill closed ``polygons`` with ``color`` at ``FILL_ALPHA``: the image shows through."""
        from PIL import Image, ImageDraw

        overlay = Image.new("RGBA", self.canvas.size, (0, 0, 0, 0))
        shade = ImageDraw.Draw(overlay)
        for polygon in polygons:
            shade.polygon(polygon, fill=(*color, FILL_ALPHA))
        blended = Image.alpha_composite(self.canvas.convert("RGBA"), overlay).convert(self.canvas.mode)
        self.canvas.paste(blended)


def draw_result(image: ImageInput, result: Result, out: str | Path | None = None, *,
                label: str | None = None) -> Image.Image:
    """``image`` (any accepted input) with ``result`` drawn over it; saved as PNG to ``out``.

    Points are dots (``POINT_COLOR``), boxes rectangles (``BOX_COLOR``), segments their
    outline (``OUTLINE_COLOR``, closed outlines filled translucent) and their box; every
    stroke has edges that contrast with the image under it, so it shows on any background. Each object gets a tag with
    ``label`` (the object's name) and its number: ``cup 1``, ``cup 2``. Raises
    ``ValueError`` for text results (caption, answer), which have nothing to draw.
    """
    if not isinstance(result, (Points, Detection, Segment)):
        raise ValueError(f"nothing to draw for a {type(result).__name__} result; "
                         "draw works with point, detect and segment results")
    canvas = open_image(image).copy()
    if canvas.mode not in ("RGB", "RGBA"):
        canvas = canvas.convert("RGB")
    width, height = canvas.size
    pen = _Pen(canvas)

    def tag(index: int) -> str:
        return f"{label} {index}" if label else str(index)

    if isinstance(result, Points):
        for i, point in enumerate(result.points, start=1):
            cx, cy = point.x * width, point.y * height
            pen.dot(cx, cy, POINT_COLOR)
            pen.label(tag(i), cx + pen.radius + pen.edge, cy - pen.radius, POINT_COLOR)
    elif isinstance(result, Detection):
        for i, box in enumerate(result.objects, start=1):
            pixels = _box_pixels(box, width, height)
            pen.rectangle(pixels, BOX_COLOR)
            pen.label(tag(i), pixels[0] - pen.edge, pixels[1] - pen.edge, BOX_COLOR)
    else:
        lines = [[(x * width, y * height) for x, y in line] for line in segment_outline(result)]
        pen.fill([line for line in lines if len(line) >= 3 and line[0] == line[-1]], OUTLINE_COLOR)
        for line in lines:
            pen.line(line, OUTLINE_COLOR)
        if result.bbox is not None:
            pixels = _box_pixels(result.bbox, width, height)
            pen.draw.rectangle(pixels, outline=BOX_COLOR, width=1)
            pen.label(tag(1), pixels[0], pixels[1], OUTLINE_COLOR)
    if out is not None:
        canvas.save(out, format="PNG")
    return canvas
