"""Spatial helpers shared by point, detect and segment: cached step specs and boxes.

A spatial step reads a coordinate (or a size) from the step's hidden state and feeds
its encoding back as the next input embedding (spec §6, §7.2). The token the device
samples at such a step is the continue/stop decision of point/detect (unmasked greedy,
as in the reference) or is ignored (segment's bounding box).
"""

from __future__ import annotations

from typing import Any

from moonpipe.model.tokenizer import Tokenizer
from moonpipe.request import Box
from moonpipe.skills.base import Feed, Spatial, StepSpec

__all__ = ["COORD_SPEC", "SIZE_SPEC", "box_from_centre", "object_prompt_ids"]

# Immutable, shared by every request: spec() returns these without allocating.
COORD_SPEC = StepSpec(feed=Feed.COORD, spatial=Spatial.COORD, greedy=True)
SIZE_SPEC = StepSpec(feed=Feed.SIZE, spatial=Spatial.SIZE, greedy=True)


def _clamp01(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def box_from_centre(x: float, y: float, w: float, h: float) -> Box:
    """The box ``(x - w/2, y - h/2, x + w/2, y + h/2)`` clamped to [0, 1].

    Arithmetic is Python float64 on the float32 values the device produced, which is
    exactly what the reference computes (``x.item() - w.item() / 2``).
    """
    half_w = w / 2
    half_h = h / 2
    return Box(
        x_min=_clamp01(x - half_w),
        y_min=_clamp01(y - half_h),
        x_max=_clamp01(x + half_w),
        y_max=_clamp01(y + half_h),
    )


def object_prompt_ids(template: dict[str, Any], object_name: str, tokenizer: Tokenizer) -> list[int]:
    """``prefix + encode(" " + object) + suffix``: the point/detect/segment prompt (§7.2)."""
    return (
        [int(i) for i in template["prefix"]]
        + tokenizer.encode(" " + object_name)
        + [int(i) for i in template["suffix"]]
    )
