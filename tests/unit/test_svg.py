"""SVG path parsing, validation, and mapping into the image."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moonpipe.request import Box
from moonpipe.skills.svg import (
    MalformedPath,
    PathCommand,
    format_path,
    parse_path,
    path_to_image,
    scale_path,
)


def test_parses_every_command_with_commas_and_spaces() -> None:
    cmds = parse_path("M120,340 L 560 340 C1 2,3 4 5 6 Q 7 8 9 10 Z")
    assert cmds == [
        PathCommand("M", (120, 340)), PathCommand("L", (560, 340)),
        PathCommand("C", (1, 2, 3, 4, 5, 6)), PathCommand("Q", (7, 8, 9, 10)), PathCommand("Z", ()),
    ]


def test_numbers_may_be_negative_decimal_or_run_together() -> None:
    assert parse_path("M -1.5 .25 L 10-20")[1] == PathCommand("L", (10, -20))
    assert parse_path("M -1.5 .25")[0] == PathCommand("M", (-1.5, 0.25))
    assert parse_path("M 1e2 2E-1")[0] == PathCommand("M", (100, 0.2))


def test_implicit_repetition_and_moveto_then_lineto() -> None:
    assert parse_path("M 1 2 3 4 L 5 6 7 8") == [
        PathCommand("M", (1, 2)), PathCommand("L", (3, 4)), PathCommand("L", (5, 6)), PathCommand("L", (7, 8)),
    ]


def test_relative_commands_become_absolute() -> None:
    assert parse_path("m 10 20 l 5 5 5 -5 z l 1 1 c 1 1 2 2 3 3") == [
        PathCommand("M", (10, 20)), PathCommand("L", (15, 25)), PathCommand("L", (20, 20)),
        PathCommand("Z", ()), PathCommand("L", (11, 21)), PathCommand("C", (12, 22, 13, 23, 14, 24)),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("   ", "empty"), ("L 1 2", "moveto"), ("10 20", "moveto"), ("M 1 2 X 3", "unexpected"),
     ("M 1", "needs 2"), ("M 1 2 C 1 2 3", "needs 6"), ("M 1 2 L Z", "needs 2"), ("M 1 2 Z 3 4", "after Z"),
     ("M 1 2 L 3 4 5", "needs 2"), ("M 1..2 3", "needs 2"), ("M 1 2 A 1 1 0 0 0 2 2", "unexpected")],
)
def test_malformed_paths_raise_a_typed_error(text: str, message: str) -> None:
    with pytest.raises(MalformedPath, match=message):
        parse_path(text)


def test_truncated_paths_drop_only_the_last_incomplete_command() -> None:
    assert parse_path("M 1 2 L 3 4 C 5", allow_truncated=True) == [PathCommand("M", (1, 2)), PathCommand("L", (3, 4))]
    assert parse_path("M 1", allow_truncated=True) == []
    assert parse_path("M 1 2 L 3 -", allow_truncated=True) == [PathCommand("M", (1, 2))]
    assert parse_path("", allow_truncated=True) == []
    with pytest.raises(MalformedPath):
        parse_path("M 1 L 3 4", allow_truncated=True)  # broken in the middle, not cut


def test_scaling_into_the_box_and_clamping() -> None:
    box = Box(0.5, 0.0, 1.0, 0.5)
    out = scale_path(parse_path("M 0 0 L 960 960 L 480 -960 L 1920 0"), box)
    assert [c.coords for c in out] == [(0.5, 0.0), (1.0, 0.5), (0.75, 0.0), (1.0, 0.0)]
    assert format_path(out) == "M 0.5000,0.0000 L 1.0000,0.5000 L 0.7500,0.0000 L 1.0000,0.0000"
    assert path_to_image("M 0 0 Z", Box(0.25, 0.25, 0.75, 0.75)) == "M 0.2500,0.2500 Z"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="MLCQZmlcqz0123456789 ,-.eE", max_size=40))
def test_arbitrary_text_either_parses_or_raises_malformed(text: str) -> None:
    try:
        cmds = parse_path(text)
    except MalformedPath:
        return
    image = scale_path(cmds, Box(0.0, 0.0, 1.0, 1.0))
    assert all(0.0 <= v <= 1.0 for c in image for v in c.coords)
    text_out = format_path(image)
    assert format_path(parse_path(text_out)) == text_out  # the output is itself a valid path
