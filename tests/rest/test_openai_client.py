"""The ``openai`` package (unchanged) against the gateway's chat completions."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from conftest import ServerHandle
from moonpipe_client import Client

from rest.conftest import STRICT_KEY, GatewayProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def chat(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.endpoint, api_key="unused", max_retries=0)


def user(image_uri: str, text: str | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_uri}}]
    if text is not None:
        parts.insert(0, {"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def test_chat_completion_is_a_query_with_usage(chat: openai.OpenAI, image_uri: str, triton_server: ServerHandle,
                                               sample_image_bytes: bytes) -> None:
    with Client(triton_server.grpc_url) as direct:
        want = direct.query(sample_image_bytes, "What is red?", max_tokens=12, temperature=0.0)
    reply = chat.chat.completions.create(model="moondream", messages=user(image_uri, "What is red?"),  # type: ignore[arg-type]
                                         temperature=0.0, max_completion_tokens=12)
    assert reply.object == "chat.completion" and reply.model == "moondream"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == want.answer
    assert reply.choices[0].finish_reason == {"stop": "stop", "length": "length"}[want.finish_reason]
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (want.num_input_tokens,
                                                                           want.num_output_tokens)
    assert reply.usage.total_tokens == want.num_input_tokens + want.num_output_tokens


def test_streamed_chat_completion(chat: openai.OpenAI, image_uri: str) -> None:
    kwargs: dict[str, Any] = {"model": "moondream2", "messages": user(image_uri, "Where is the ball?"),
                              "temperature": 0.0, "max_tokens": 16}
    whole = chat.chat.completions.create(**kwargs)
    chunks = list(chat.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1


def test_image_alone_is_captioned(chat: openai.OpenAI, image_uri: str) -> None:
    reply = chat.chat.completions.create(model="moondream", messages=user(image_uri, None),  # type: ignore[arg-type]
                                         max_tokens=4, temperature=2.0, top_p=1.0)  # flat: no eos first
    assert reply.choices[0].message.content


@pytest.mark.parametrize(("change", "param"), [
    ({"messages": [{"role": "system", "content": "be brief"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hello"}]}, "messages[0].content"),
    ({"n": 2}, "n"),
    ({"stop": ["."]}, "stop"),
    ({"model": "gpt-4o"}, "model"),
    ({"temperature": 3.0}, "temperature"),
])
def test_requests_moondream2_cannot_honour_are_400(chat: openai.OpenAI, image_uri: str, change: dict[str, Any],
                                                   param: str) -> None:
    kwargs: dict[str, Any] = {"model": "moondream", "messages": user(image_uri, "What?"), **change}
    with pytest.raises(openai.BadRequestError) as info:
        chat.chat.completions.create(**kwargs)
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body.get("param") == param


def test_remote_image_urls_are_refused(chat: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat.chat.completions.create(model="moondream", messages=user("https://example.com/cat.jpg", "What?"))  # type: ignore[arg-type]
    assert "data URI" in str(info.value)


def test_models_list_and_bearer_keys(chat: openai.OpenAI, strict_gateway: GatewayProcess, image_uri: str) -> None:
    assert [m.id for m in chat.models.list()] == ["moondream", "moondream2"]
    keyed = openai.OpenAI(base_url=strict_gateway.endpoint, api_key=STRICT_KEY, max_retries=0)
    assert [m.id for m in keyed.models.list()] == ["moondream"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=strict_gateway.endpoint, api_key="wrong", max_retries=0).models.list()
