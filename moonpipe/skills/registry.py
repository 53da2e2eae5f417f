"""The skill registry: vocabulary masks, per-request constraints, sampling defaults, results.

Engine start-up::

    skills = SkillSet(tokenizer, model_cfg.tokenizer)      # scans the vocabulary once
    masks = skills.vocab_masks                             # register at table rows 1..N
    mask_index = {m.name: i + 1 for i, m in enumerate(masks)}

Per request (the submitting thread, in ``Engine.submit``)::

    constraint = skills.make_constraint(request, mask_index, max_prompt_tokens=...)
    temperature, top_p, max_tokens, max_objects = sampling_defaults(request)

At the end (the output thread)::

    final = final_output(request, token_ids, points, boxes, finish_reason, tokenizer)

The scheduler never asks which skill a request is; the factory picks the class.
"""

from __future__ import annotations

from dataclasses import dataclass

from moonpipe.config import TokenizerConfig
from moonpipe.errors import InvalidRequest
from moonpipe.model.tokenizer import Tokenizer
from moonpipe.request import Box, FinishReason, Point, Request
from moonpipe.skills.base import Constraint
from moonpipe.skills.caption import caption_prompt_ids
from moonpipe.skills.detect import DetectConstraint
from moonpipe.skills.path_grammar import PathGrammar, compile_path_grammar
from moonpipe.skills.point import PointConstraint
from moonpipe.skills.query import query_prompt_ids
from moonpipe.skills.segment import SegmentConstraint
from moonpipe.skills.spatial import object_prompt_ids
from moonpipe.skills.svg import MalformedPath, path_to_image
from moonpipe.skills.text import TextConstraint, text_specs
from moonpipe.step import Feed, StepSpec, VocabMask

__all__ = [
    "DEFAULT_MAX_OBJECTS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "FinalOutput",
    "SkillSet",
    "final_output",
    "sampling_defaults",
    "vocab_masks",
]

# Reference defaults (md.py, spec §7).
DEFAULT_TEMPERATURE = 0.5
DEFAULT_TOP_P = 0.3
DEFAULT_MAX_TOKENS = 768
DEFAULT_MAX_OBJECTS = 50
_GREEDY_SKILLS = ("point", "detect")  # always argmax in the reference


def sampling_defaults(request: Request) -> tuple[float, float, int, int]:
    """``(temperature, top_p, max_tokens, max_objects)`` with the request's overrides.

    point/detect are always greedy (temperature 0); their specs also say so.
    """
    if request.skill in _GREEDY_SKILLS:
        temperature = 0.0
    else:
        temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
    top_p = DEFAULT_TOP_P if request.top_p is None else request.top_p
    max_tokens = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
    max_objects = DEFAULT_MAX_OBJECTS if request.max_objects is None else request.max_objects
    return temperature, top_p, max_tokens, max_objects


def vocab_masks(tokenizer: Tokenizer, tok_cfg: TokenizerConfig | None = None) -> list[VocabMask]:
    """Every vocabulary mask the skills use (one vocabulary scan; prefer ``SkillSet``)."""
    return list(compile_path_grammar(tokenizer, tok_cfg or TokenizerConfig()).masks)


class SkillSet:
    """Everything the skills precompute from the tokenizer, built once at engine start.

    Holds the compiled segment path grammar and the cached step specs, and builds one
    constraint per request. Thread-safe after construction: the only mutable part, the
    per-mask-index spec cache, is filled idempotently by whichever caller thread first
    builds a segment constraint (the same tuple every time).
    """

    def __init__(self, tokenizer: Tokenizer, tok_cfg: TokenizerConfig) -> None:
        self._tokenizer = tokenizer
        self._tok_cfg = tok_cfg
        self._grammar: PathGrammar = compile_path_grammar(tokenizer, tok_cfg)
        self._text_specs = {g: text_specs(tok_cfg.answer_id, g) for g in (False, True)}
        self._bound_index: dict[str, int] | None = None
        self._state_specs: tuple[StepSpec, ...] = ()

    @property
    def vocab_masks(self) -> list[VocabMask]:
        """Masks to register (engine: table rows 1..N in this order; row 0 allows all)."""
        return list(self._grammar.masks)

    def _segment_specs(self, mask_index: dict[str, int]) -> tuple[StepSpec, ...]:
        if mask_index is not self._bound_index:
            missing = [m.name for m in self._grammar.masks if m.name not in mask_index]
            if missing:
                raise ValueError(f"SkillSet: masks not registered: {', '.join(missing)}")
            by_mask = [StepSpec(feed=Feed.TOKEN, mask=mask_index[m.name]) for m in self._grammar.masks]
            self._state_specs = tuple(by_mask[i] for i in self._grammar.state_mask)
            self._bound_index = mask_index
        return self._state_specs

    def prompt_ids(self, request: Request) -> list[int]:
        """The prompt ids that follow BOS + the image tokens."""
        templates = self._tok_cfg.templates
        if request.skill == "caption":
            return caption_prompt_ids(request, self._tok_cfg)
        if request.skill == "query":
            return query_prompt_ids(request, self._tokenizer, self._tok_cfg)
        return object_prompt_ids(templates[request.skill], request.prompt, self._tokenizer)

    def make_constraint(
        self, request: Request, mask_index: dict[str, int], *, max_prompt_tokens: int
    ) -> Constraint:
        """The constraint of ``request``; ``InvalidRequest`` ("PROMPT: ...") if the prompt is too long.

        ``mask_index`` maps each registered mask name to its table row (pass the same
        dict every time: the per-state specs are built once per dict).
        """
        prompt = self.prompt_ids(request)
        if len(prompt) > max_prompt_tokens:
            raise InvalidRequest(
                f"PROMPT: the prompt is {len(prompt)} tokens; this server accepts at most "
                f"{max_prompt_tokens} (shorten the {'question' if request.skill == 'query' else 'text'})"
            )
        temperature, _, max_tokens, max_objects = sampling_defaults(request)
        eos = self._tok_cfg.eos_id
        skill = request.skill
        if skill in ("caption", "query"):
            return TextConstraint(prompt, eos_id=eos, max_tokens=max_tokens,
                                  specs=self._text_specs[temperature == 0.0])
        if skill == "point":
            return PointConstraint(prompt, eos_id=eos, max_tokens=max_tokens, max_objects=max_objects)
        if skill == "detect":
            return DetectConstraint(prompt, eos_id=eos, max_tokens=max_tokens, max_objects=max_objects)
        return SegmentConstraint(prompt, grammar=self._grammar,
                                 state_specs=self._segment_specs(mask_index), max_tokens=max_tokens)


@dataclass(frozen=True, slots=True)
class FinalOutput:
    """A request's final payload (``Result`` fields the skills own).

    ``text``: the decoded tokens (segment: the raw path on the 960-unit viewbox, what was
    streamed); ``svg_path``: segment's path in image-relative coordinates; ``error``: why
    ``finish_reason`` became "error" (empty otherwise).
    """

    text: str
    points: tuple[Point, ...]
    boxes: tuple[Box, ...]
    svg_path: str
    finish_reason: str
    error: str = ""


def final_output(
    request: Request,
    token_ids: list[int],
    points: list[Point] | tuple[Point, ...],
    boxes: list[Box] | tuple[Box, ...],
    finish_reason: str,
    tokenizer: Tokenizer,
) -> FinalOutput:
    """Assemble the final output (runs off the scheduler thread; never raises for bad output)."""
    text = tokenizer.decode(list(token_ids))
    if request.skill != "segment":
        return FinalOutput(text, tuple(points), tuple(boxes), "", finish_reason)
    if not boxes:  # cut before the box was complete
        error = "" if finish_reason != FinishReason.ERROR else "segment: no bounding box was produced"
        return FinalOutput(text, (), (), "", finish_reason, error)
    truncated = finish_reason in (FinishReason.LENGTH, FinishReason.CANCELLED)
    try:
        svg_path = path_to_image(text, boxes[0], allow_truncated=truncated)
    except MalformedPath as exc:
        return FinalOutput(text, (), tuple(boxes), "", FinishReason.ERROR,
                           f"segment: the model produced a malformed SVG path: {exc}")
    if finish_reason == FinishReason.ERROR:
        return FinalOutput(text, (), tuple(boxes), svg_path, finish_reason,
                           "segment: the generated path left the SVG path grammar")
    return FinalOutput(text, (), tuple(boxes), svg_path, finish_reason)
