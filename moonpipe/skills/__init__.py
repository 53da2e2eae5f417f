"""Skills: per-request constraint objects (caption, query, point, detect, segment).

``base`` defines the interface the scheduler uses; ``registry`` builds constraints,
vocabulary masks and final outputs, so the scheduler never branches on the skill.
"""

from __future__ import annotations

from moonpipe.skills.base import (
    Advance,
    Constraint,
    Feed,
    Spatial,
    StepOutput,
    StepSpec,
    VocabMask,
)
from moonpipe.skills.detok import IncrementalDetokenizer
from moonpipe.skills.registry import (
    DEFAULT_MAX_OBJECTS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    FinalOutput,
    SkillSet,
    finish,
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
    "Feed",
    "FinalOutput",
    "IncrementalDetokenizer",
    "SkillSet",
    "Spatial",
    "StepOutput",
    "StepSpec",
    "VocabMask",
    "finish",
    "sampling_defaults",
    "vocab_masks",
]
