"""Unit tests of result drawing: SVG path parsing and pixels of the rendered PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from moonpipe_client import Box, Caption, Detection, Point, Points, Segment, draw_result
from moonpipe_client.draw import (
    BOX_COLOR,
    OUTLINE_COLOR,
    POINT_COLOR,
    parse_svg_path,
    segment_outline,
)
from PIL import Image

BACKGROUND = (20, 20, 20)


def _canvas(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (200, 100), BACKGROUND).save(path)
    return path


def _saved(out: Path) -> Image.Image:
    with Image.open(out) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def test_parse_svg_path_lines_and_close() -> None:
    assert parse_svg_path("M 0 0 L 10 0 L 10 5 Z") == [[(0, 0), (10, 0), (10, 5), (0, 0)]]
    assert parse_svg_path("m1,1 h2 v3 l-1,-1z") == [[(1, 1), (3, 1), (3, 4), (2, 3), (1, 1)]]
    assert parse_svg_path("M0 0 1 1 2 0") == [[(0, 0), (1, 1), (2, 0)]]  # implicit line-tos
    assert parse_svg_path("M0 0 L1 1 M5 5 L6 6") == [[(0, 0), (1, 1)], [(5, 5), (6, 6)]]


def test_parse_svg_path_curves_end_at_their_end_point() -> None:
    (line,) = parse_svg_path("M0 0 C 0 10 10 10 10 0 Q 15 -5 20 0 S 30 5 30 0")
    assert line[0] == (0, 0)
    assert (10.0, 0.0) in line and line[-1] == pytest.approx((30.0, 0.0))
    assert max(y for _, y in line) == pytest.approx(7.5)  # the cubic's apex


@pytest.mark.parametrize("bad", ["M 0", "M 0 0 Q 1 2", "M 0 0 L x 1", "hello", "5 5"])
def test_parse_svg_path_rejects_malformed_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_svg_path(bad)


def test_segment_outline_maps_viewbox_coordinates_into_the_box() -> None:
    relative = Segment(path="M 0.1 0.2 L 0.3 0.4", bbox=Box(0.0, 0.0, 1.0, 1.0))
    assert segment_outline(relative) == [[(0.1, 0.2), (0.3, 0.4)]]
    viewbox = Segment(path="M 0 0 L 960 960", bbox=Box(0.5, 0.25, 0.75, 0.75))
    assert segment_outline(viewbox) == [[(0.5, 0.25), (0.75, 0.75)]]


def test_points_are_drawn_as_dots(tmp_path: Path) -> None:
    out = tmp_path / "points.png"
    draw_result(_canvas(tmp_path), Points(points=(Point(0.25, 0.5), Point(0.75, 0.2))), out)
    image = _saved(out)
    assert image.getpixel((50, 50)) == POINT_COLOR
    assert image.getpixel((150, 20)) == POINT_COLOR
    assert image.getpixel((100, 50)) == BACKGROUND
    assert image.getpixel((50, 80)) == BACKGROUND


def test_boxes_are_drawn_as_rectangles(tmp_path: Path) -> None:
    out = tmp_path / "boxes.png"
    draw_result(_canvas(tmp_path), Detection(objects=(Box(0.1, 0.2, 0.6, 0.8),)), out)
    image = _saved(out)
    # Box in pixels: x 20..120, y 20..80; edges drawn, inside left as it was.
    assert image.getpixel((70, 20)) == BOX_COLOR  # top edge
    assert image.getpixel((20, 50)) == BOX_COLOR  # left edge
    assert image.getpixel((120, 50)) == BOX_COLOR or image.getpixel((119, 50)) == BOX_COLOR  # right edge
    assert image.getpixel((70, 50)) == BACKGROUND  # inside
    assert image.getpixel((160, 50)) == BACKGROUND  # outside


def test_segments_are_drawn_as_outlines(tmp_path: Path) -> None:
    out = tmp_path / "segment.png"
    segment = Segment(path="M 0.1 0.5 L 0.9 0.5", bbox=Box(0.05, 0.1, 0.95, 0.9))
    returned = draw_result(_canvas(tmp_path), segment, out)
    image = _saved(out)
    assert image.getpixel((100, 50)) == OUTLINE_COLOR  # on the outline
    assert image.getpixel((100, 30)) == BACKGROUND  # inside the box, off the outline
    assert returned.getpixel((100, 50)) == OUTLINE_COLOR


def test_drawing_does_not_modify_the_input(tmp_path: Path) -> None:
    source = Image.new("RGB", (20, 20), BACKGROUND)
    draw_result(source, Points(points=(Point(0.5, 0.5),)))
    assert source.getpixel((10, 10)) == BACKGROUND


def test_text_results_have_nothing_to_draw(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to draw"):
        draw_result(_canvas(tmp_path), Caption(caption="a cat"))


def _luminance(rgb: Any) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


@pytest.mark.parametrize("background", [(0, 0, 0), (255, 255, 255), BOX_COLOR, (128, 128, 128)])
def test_a_box_stands_out_on_any_background(tmp_path: Path, background: tuple[int, int, int]) -> None:
    source = Image.new("RGB", (400, 300), background)
    drawn = draw_result(source, Detection(objects=(Box(0.25, 0.25, 0.75, 0.75),))).convert("RGB")
    across_left_edge = [drawn.getpixel((x, 150)) for x in range(90, 111)]
    assert max(abs(_luminance(p) - _luminance(background)) for p in across_left_edge) > 100
    assert sum(p != background for p in across_left_edge) >= 4  # a thick stroke, not a hairline


@pytest.mark.parametrize("background", [(0, 0, 0), (255, 255, 255), POINT_COLOR])
def test_a_point_stands_out_on_any_background(background: tuple[int, int, int]) -> None:
    drawn = draw_result(Image.new("RGB", (400, 300), background), Points(points=(Point(0.5, 0.5),)))
    around = [drawn.convert("RGB").getpixel((x, 150)) for x in range(185, 216)]
    assert max(abs(_luminance(p) - _luminance(background)) for p in around) > 100


def _changed(image: Image.Image, box: tuple[int, int, int, int], background: tuple[int, int, int]) -> int:
    rgb = image.convert("RGB")
    return sum(rgb.getpixel((x, y)) != background for x in range(box[0], box[2]) for y in range(box[1], box[3]))


def test_boxes_are_labelled_with_the_object_name_and_index() -> None:
    source = Image.new("RGB", (400, 300), BACKGROUND)
    boxes = Detection(objects=(Box(0.25, 0.3, 0.5, 0.6), Box(0.6, 0.3, 0.9, 0.6)))
    plain = draw_result(source, boxes)
    named = draw_result(source, boxes, label="cup")
    above_first = (100, 60, 200, 88)  # just above the first box's top edge (y = 90)
    assert _changed(named, above_first, BACKGROUND) > _changed(plain, above_first, BACKGROUND) > 0
    assert named.convert("RGB").getpixel((150, 135)) == BACKGROUND  # inside stays clear


def test_closed_segment_outlines_are_filled_translucent(tmp_path: Path) -> None:
    segment = Segment(path="M 0.2 0.2 L 0.8 0.2 L 0.8 0.8 L 0.2 0.8 Z", bbox=Box(0.2, 0.2, 0.8, 0.8))
    drawn = draw_result(Image.new("RGB", (200, 100), BACKGROUND), segment).convert("RGB")
    inside = drawn.getpixel((100, 50))
    assert isinstance(inside, tuple)
    assert inside not in (BACKGROUND, OUTLINE_COLOR)  # tinted, the image still shows through
    for channel, (low, high) in enumerate(zip(BACKGROUND, OUTLINE_COLOR, strict=True)):
        assert min(low, high) <= inside[channel] <= max(low, high)
    assert drawn.getpixel((10, 50)) == BACKGROUND  # outside untouched
