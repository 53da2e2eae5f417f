"""OpenAI chat completions: ``POST /v1/chat/completions`` (the ``openai`` package unchanged).

moondream2 answers one question about one image, so a request holds one ``user``
message whose content has one ``image_url`` part (a data URI) and text: text + image is
a ``query``; an image alone is a ``caption`` (normal length). Everything else OpenAI's
API allows but moondream2 cannot honour (system prompts, earlier turns, several images,
``stop``, ``seed``, tools, penalties, logprobs, ``n > 1``, JSON mode, reasoning) is
refused with a 400 naming the field. Streams send ``chat.completion.chunk`` events and
end with ``data: [DONE]``; ``usage`` comes from the engine's token counts (in the
response, or in a last chunk with ``stream_options.include_usage``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from moonpipe_client.protocol import Settings
from moonpipe_client.results import Result

from moonpipe_gateway.errors import ApiError
from moonpipe_gateway.forward import Call, Opened, guard
from moonpipe_gateway.images import decode_image_url
from moonpipe_gateway.moondream_api import check_model
from moonpipe_gateway.schemas import ChatBody, ChatMessage
from moonpipe_gateway.services import Services
from moonpipe_gateway.sse import DONE, SLOT, EventStream, Last, TextEvent, sse

__all__ = ["openai_router", "parse_messages"]

_FINISH = {"stop": "stop", "length": "length"}


def _refuse(field: str, why: str) -> ApiError:
    return ApiError(400, f"{field}: {why}", param=field, code="unsupported_parameter")


def _check_unsupported(body: ChatBody) -> None:
    """Refuse, by name, the OpenAI parameters moondream2 cannot honour."""
    if body.n not in (None, 1):
        raise _refuse("n", "moonpipe returns one choice per request; send n=1 or leave it out")
    checks: list[tuple[str, bool, str]] = [
        ("stop", body.stop not in (None, [], ""), "stop sequences are not supported"),
        ("seed", body.seed is not None, "seeded sampling is not supported; use temperature=0 for repeatable answers"),
        ("presence_penalty", bool(body.presence_penalty), "penalties are not supported"),
        ("frequency_penalty", bool(body.frequency_penalty), "penalties are not supported"),
        ("logit_bias", bool(body.logit_bias), "logit_bias is not supported"),
        ("logprobs", bool(body.logprobs), "log probabilities are not returned"),
        ("top_logprobs", body.top_logprobs is not None, "log probabilities are not returned"),
        ("tools", bool(body.tools), "moondream2 does not call tools"),
        ("tool_choice", body.tool_choice not in (None, "none"), "moondream2 does not call tools"),
        ("reasoning", body.reasoning is not None, "moondream2 has no reasoning mode"),
        ("reasoning_effort", body.reasoning_effort is not None, "moondream2 has no reasoning mode"),
    ]
    for field, bad, why in checks:
        if bad:
            raise _refuse(field, why)
    fmt = body.response_format
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _refuse("response_format", "only plain text answers are produced (type: text)")


def _max_tokens(body: ChatBody) -> int | None:
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise _refuse("max_tokens", "max_tokens and max_completion_tokens disagree; send one of them")
    return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens


def _image_url(part: dict[str, Any], where: str) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise ApiError(400, f"{where}.image_url.url: expected a string (a data URI)", param=f"{where}.image_url.url",
                       code="invalid_value")
    return url


def parse_messages(messages: list[ChatMessage]) -> tuple[str, str, str]:
    """``(text, image URL, the image's field path)`` of the one user message."""
    if not messages:
        raise ApiError(400, "messages: empty; send one user message with an image and a question",
                       param="messages", code="invalid_value")
    for i, message in enumerate(messages):
        if message.role != "user":
            raise _refuse(f"messages[{i}].role", f"{message.role!r} messages cannot be honoured: moondream2 "
                          "answers one user message (no system prompt, no earlier turns)")
    if len(messages) > 1:
        raise _refuse("messages", "moondream2 has no multi-turn chat; send one user message with the image "
                      "and the question")
    content = messages[0].content
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    if isinstance(content, str):
        texts.append(content)
    for j, part in enumerate(content if isinstance(content, list) else []):
        where = f"messages[0].content[{j}]"
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append((_image_url(part, where), f"{where}.image_url.url"))
        else:
            raise ApiError(400, f"{where}: expected a text part or an image_url part, got type {kind!r}",
                           param=where, code="invalid_value")
    if len(images) > 1:
        raise _refuse("messages[0].content", "moondream2 looks at one image per request; send one image_url part")
    if not images:
        raise ApiError(400, "messages[0].content: moondream2 needs an image: add an image_url part with a data "
                       "URI (data:image/jpeg;base64,...); text-only chat is not supported",
                       param="messages[0].content", code="image_required")
    return "\n".join(t for t in texts if t.strip()), images[0][0], images[0][1]


def _usage(result: Result | None) -> dict[str, int]:
    n_in = result.num_input_tokens if result else 0
    n_out = result.num_output_tokens if result else 0
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def _completion_text(result: Result) -> str:
    return str(getattr(result, "answer", None) or getattr(result, "caption", ""))


async def _chunk_events(opened: Opened, head: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    content = TextEvent({**head, "choices": [{"index": 0, "delta": {"content": SLOT}, "finish_reason": None,
                                              "logprobs": None}]})
    events = chunk({"role": "assistant", "content": ""})  # goes out with the first piece (already here)
    async for piece in opened.chunks():
        if piece.text:
            events += content(piece.text)
        if piece.final:  # the last text (if any), the finish, the usage and [DONE] in one write
            result = opened.final_result
            events += chunk({}, _FINISH.get(result.finish_reason if result else "stop", "stop"))
            if include_usage:
                events += sse({**head, "choices": [], "usage": _usage(result)})
            yield Last(events + DONE)
            return
        if events:
            yield events
            events = b""
    yield Last(events + DONE)  # not reached: the stream ends with its final piece or raises


def openai_router(services: Services) -> APIRouter:
    """``POST /v1/chat/completions`` bound to ``services``."""
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: Request) -> Response:
        check_model(body.model, services)
        _check_unsupported(body)
        text, url, image_field = parse_messages(body.messages)
        image = decode_image_url(url, image_field, services.config.max_image_bytes)
        skill = "query" if text else "caption"
        settings = Settings(max_tokens=_max_tokens(body), temperature=body.temperature, top_p=body.top_p)
        fields = {"IMAGE": image_field, "PROMPT": "messages[0].content", "MAX_TOKENS": "max_tokens",
                  "TEMPERATURE": "temperature", "TOP_P": "top_p"}
        call = Call(skill, image, text, body.stream, settings, fields)
        opened = await guard(request, services.forwarder.open(call))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.model}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStream(_chunk_events(opened, head, include_usage), opened.cancel, abort_on_error=False)
        result = await guard(request, opened.result())
        return JSONResponse({
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": _completion_text(result)},
                         "finish_reason": _FINISH.get(result.finish_reason, "stop"), "logprobs": None}],
            "usage": _usage(result),
        })

    return router
