"""Request bodies of Moondream's REST routes and of OpenAI chat completions (pydantic).

Strict types (``"stream": "yes"`` is a 400, not a truthy string) and no unknown fields:
a field the gateway does not know is a field it would silently ignore. Fields the
official clients send that moondream2 cannot honour (``spatial_refs``, ``reasoning``,
most OpenAI sampling knobs) are declared so that the routes refuse them by name with a
reason (:mod:`moonpipe_gateway.moondream_api`, :mod:`moonpipe_gateway.openai_api`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CaptionBody",
    "ChatBody",
    "ChatMessage",
    "DetectBody",
    "PointBody",
    "QueryBody",
    "SamplingSettings",
    "SegmentBody",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SamplingSettings(_Strict):
    """Moondream's ``settings``; unset values take the engine's defaults (moondream2's)."""

    temperature: float | None = Field(None, ge=0.0, le=5.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1, le=2048)
    max_objects: int | None = Field(None, ge=1, le=256)


class _SkillBody(_Strict):
    model: str | None = None
    settings: SamplingSettings | None = None


class CaptionBody(_SkillBody):
    image_url: str
    length: Literal["short", "normal", "long"] = "normal"
    stream: bool = False


class QueryBody(_SkillBody):
    question: str
    image_url: str | None = None
    stream: bool = False
    reasoning: bool | None = None
    spatial_refs: Any = None


class PointBody(_SkillBody):
    image_url: str
    object: str
    spatial_refs: Any = None


class DetectBody(_SkillBody):
    image_url: str
    object: str


class SegmentBody(_SkillBody):
    image_url: str
    object: str
    stream: bool = False
    spatial_refs: Any = None


class ChatMessage(_Strict):
    """One message; ``content`` is a string or a list of ``text``/``image_url`` parts
    (checked by the route, which names the exact part at fault)."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatBody(_Strict):
    """OpenAI's chat completion request: the fields moonpipe honours, and the common ones
    it must refuse (declared so that the refusal names them; see ``openai_api``)."""

    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(None, ge=1, le=2048)
    n: int | None = None
    user: str | None = None
    stop: Any = None
    seed: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Any = None
    logprobs: bool | None = None
    top_logprobs: Any = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    reasoning: Any = None
    reasoning_effort: Any = None
