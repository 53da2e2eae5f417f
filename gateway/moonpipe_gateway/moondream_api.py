"""Moondream's REST routes: ``POST /v1/{caption,query,point,detect,segment}``.

Request and response JSON, streaming framing and status codes as Moondream's official
client (``moondream`` 2.6, ``md.vl(endpoint=...)``) speaks them
(``shared/docs/moondream-rest.md``):

- caption/query stream ``data: {"chunk": "...", "completed": false}`` events and end
  with ``data: {"completed": true, ...}`` (no ``chunk`` key: the client would yield it);
- segment streams ``{"type": "bbox"}``, ``{"type": "path_delta"}``... and
  ``{"type": "final", "path", "bbox", "completed": true}``; paths are bbox-relative;
- answers also carry ``finish_reason`` and ``usage`` (token counts), which the client
  ignores.

Settings left out take the engine's defaults (moondream2's reference: temperature 0.5,
top_p 0.3, max_tokens 768, max_objects 50). What moondream2 cannot do is refused by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from moonpipe_client import Answer, Box, Caption, Detection, Points, Segment
from moonpipe_client.protocol import Settings
from moonpipe_client.results import Result

from moonpipe_gateway.errors import ApiError
from moonpipe_gateway.forward import Call, Forwarder, Opened, guard
from moonpipe_gateway.images import decode_image_url
from moonpipe_gateway.schemas import (
    CaptionBody,
    DetectBody,
    PointBody,
    QueryBody,
    SamplingSettings,
    SegmentBody,
)
from moonpipe_gateway.segment import PathDeltaScaler, box_relative_path
from moonpipe_gateway.services import Services
from moonpipe_gateway.sse import SLOT, EventStream, Last, TextEvent, sse

__all__ = ["SKILL_SETTINGS", "moondream_router"]

# Which `settings` keys each skill honours (point/detect decode greedily; segment outlines one object).
SKILL_SETTINGS: dict[str, tuple[str, ...]] = {
    "caption": ("temperature", "top_p", "max_tokens"),
    "query": ("temperature", "top_p", "max_tokens"),
    "point": ("max_tokens", "max_objects"),
    "detect": ("max_tokens", "max_objects"),
    "segment": ("temperature", "top_p", "max_tokens"),
}
_WHY_NOT = {
    "temperature": "decodes greedily (the reference always takes the most likely token)",
    "top_p": "decodes greedily (the reference always takes the most likely token)",
    "max_objects": "outlines a single object",
}
_SETTING_INPUTS = {"MAX_TOKENS": "max_tokens", "TEMPERATURE": "temperature", "TOP_P": "top_p",
                   "MAX_OBJECTS": "max_objects"}


def check_model(model: str | None, services: Services, field: str = "model") -> None:
    """``model`` must be one this gateway serves (never silently swapped)."""
    served = services.config.served_models
    if model is not None and model not in served:
        raise ApiError(400, f"{field}: this server runs {served[0]!r}, not {model!r}; leave `model` out or "
                       f"send one of {list(served)} (GET /v1/models)", param=field, code="model_not_found")


def _settings(skill: str, settings: SamplingSettings | None, length: str | None = None) -> Settings:
    if settings is None:
        return Settings(length=length)
    for name in settings.model_fields_set:
        if getattr(settings, name) is not None and name not in SKILL_SETTINGS[skill]:
            raise ApiError(400, f"settings.{name}: {skill} {_WHY_NOT.get(name, 'does not use it')}; "
                           f"{skill} accepts {', '.join(SKILL_SETTINGS[skill])}", param=f"settings.{name}",
                           code="unsupported_setting")
    return Settings(length=length, max_tokens=settings.max_tokens, temperature=settings.temperature,
                    top_p=settings.top_p, max_objects=settings.max_objects)


def _refuse_spatial_refs(spatial_refs: Any) -> None:
    if spatial_refs is not None:
        raise ApiError(400, "spatial_refs: moondream2 cannot ground a request on points or boxes (a "
                       "Moondream 3 feature); send the request without spatial_refs", param="spatial_refs",
                       code="unsupported_field")


def _fields(prompt_field: str) -> dict[str, str]:
    fields = {"IMAGE": "image_url", "PROMPT": prompt_field, "LENGTH": "length"}
    fields.update({k: f"settings.{v}" for k, v in _SETTING_INPUTS.items()})
    return fields


def _usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.num_input_tokens, "completion_tokens": result.num_output_tokens,
            "total_tokens": result.num_input_tokens + result.num_output_tokens}


def _end(result: Result | None) -> dict[str, Any]:
    return {} if result is None else {"finish_reason": result.finish_reason, "usage": _usage(result)}


_TEXT_CHUNK = TextEvent({"chunk": SLOT, "completed": False})
_PATH_DELTA = TextEvent({"type": "path_delta", "chunk": SLOT, "completed": False})


async def _text_events(opened: Opened, result: Callable[[], Result | None]) -> AsyncIterator[bytes]:
    async for chunk in opened.chunks():
        if chunk.final:  # the last text (if any) and the end go out in one write
            text = _TEXT_CHUNK(chunk.text) if chunk.text else b""
            yield Last(text + sse({"completed": True, **_end(result())}))
        elif chunk.text:
            yield _TEXT_CHUNK(chunk.text)


async def _segment_events(opened: Opened, result: Callable[[], Result | None]) -> AsyncIterator[bytes]:
    scaler = PathDeltaScaler()
    box: Box | None = None
    async for chunk in opened.chunks():
        events = b""
        if chunk.boxes and box is None:
            box = chunk.boxes[0]
            events = sse({"type": "bbox", "bbox": box.to_dict()})
        text = scaler.feed(chunk.text) + (scaler.flush() if chunk.final else "")
        if text:
            events += _PATH_DELTA(text)
        if chunk.final:
            path = box_relative_path(chunk.svg_path or "", box) if box is not None else ""
            yield Last(events + sse({"type": "final", "path": path, "bbox": None if box is None else box.to_dict(),
                                     "completed": True, **_end(result())}))
        elif events:
            yield events


def _segment_json(result: Segment) -> dict[str, Any]:
    if result.bbox is None:
        return {"path": "", "bbox": None}
    return {"path": box_relative_path(result.path, result.bbox), "bbox": result.bbox.to_dict()}


def _result_json(result: Result) -> dict[str, Any]:
    if isinstance(result, Caption):
        body: dict[str, Any] = {"caption": result.caption}
    elif isinstance(result, Answer):
        body = {"answer": result.answer}
    elif isinstance(result, (Points, Detection)):
        body = result.to_dict()
    elif isinstance(result, Segment):
        body = _segment_json(result)
    else:  # pragma: no cover - the five results above are all there are
        raise TypeError(f"unexpected result {type(result).__name__}")
    return {**body, **_end(result)}


async def _respond(services: Services, request: Request, call: Call) -> Response:
    forwarder: Forwarder = services.forwarder
    opened = await guard(request, forwarder.open(call))
    if not call.stream:
        return JSONResponse(_result_json(await guard(request, opened.result())))
    events = _segment_events if call.skill == "segment" else _text_events
    return EventStream(events(opened, lambda: opened.final_result), opened.cancel, abort_on_error=True)


def moondream_router(services: Services) -> APIRouter:
    """The five skill routes, bound to ``services``."""
    router = APIRouter()
    max_image = services.config.max_image_bytes

    @router.post("/v1/caption")
    async def caption(body: CaptionBody, request: Request) -> Response:
        check_model(body.model, services)
        image = decode_image_url(body.image_url, "image_url", max_image)
        call = Call("caption", image, "", body.stream, _settings("caption", body.settings, body.length),
                    _fields("prompt"))
        return await _respond(services, request, call)

    @router.post("/v1/query")
    async def query(body: QueryBody, request: Request) -> Response:
        check_model(body.model, services)
        if body.reasoning:
            raise ApiError(400, "reasoning: moondream2 has no reasoning mode (a Moondream 3 feature); send "
                           "the question without reasoning", param="reasoning", code="unsupported_field")
        _refuse_spatial_refs(body.spatial_refs)
        if body.image_url is None:
            raise ApiError(400, "image_url: moondream2 answers questions about an image; text-only queries "
                           "are not supported: send image_url (a data URI)", param="image_url",
                           code="image_required")
        image = decode_image_url(body.image_url, "image_url", max_image)
        call = Call("query", image, body.question, body.stream, _settings("query", body.settings),
                    _fields("question"))
        return await _respond(services, request, call)

    @router.post("/v1/point")
    async def point(body: PointBody, request: Request) -> Response:
        check_model(body.model, services)
        _refuse_spatial_refs(body.spatial_refs)
        image = decode_image_url(body.image_url, "image_url", max_image)
        call = Call("point", image, body.object, False, _settings("point", body.settings), _fields("object"))
        return await _respond(services, request, call)

    @router.post("/v1/detect")
    async def detect(body: DetectBody, request: Request) -> Response:
        check_model(body.model, services)
        image = decode_image_url(body.image_url, "image_url", max_image)
        call = Call("detect", image, body.object, False, _settings("detect", body.settings), _fields("object"))
        return await _respond(services, request, call)

    @router.post("/v1/segment")
    async def segment(body: SegmentBody, request: Request) -> Response:
        check_model(body.model, services)
        _refuse_spatial_refs(body.spatial_refs)
        image = decode_image_url(body.image_url, "image_url", max_image)
        call = Call("segment", image, body.object, body.stream, _settings("segment", body.settings),
                    _fields("object"))
        return await _respond(services, request, call)

    return router
