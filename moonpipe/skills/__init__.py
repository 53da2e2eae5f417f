"""Skills: per-request constraint objects (caption, query, point, detect, segment).

``base`` defines the interface the scheduler uses; ``registry`` builds constraints,
vocabulary masks and final outputs, so the scheduler never branches on the skill. What a
constraint asks of a step (``StepSpec``, ``Feed``, ...) is ``moonpipe/step.py``.
"""

from __future__ import annotations

from moonpipe.skills.base import Advance, Constraint
from moonpipe.skills.detok import IncrementalDetokenizer
from moonpipe.skills.registry import (
    DEFAULT_MAX_OBJECTS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    FinalOutput,
    SkillSet,
    final_output,
    sampling_defaults,
    vocab_masks,
)

__all__ = [
    "DEFAULT_MAX_OBJECTS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "Advance",
    "Constraint",
    "FinalOutput",
    "IncrementalDetokenizer",
    "SkillSet",
    "final_output",
    "sampling_defaults",
    "vocab_masks",
]
