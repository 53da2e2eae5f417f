"""The wire format of the ``moondream`` model: request tensors in, stream responses out.

Both clients talk to Triton's ``ModelStreamInfer`` RPC directly (one bidirectional stream
per request, holding one request), because the model is *decoupled*: it answers with any
number of responses. Every request sets the parameter
``triton_enable_empty_final_response`` so that the server marks the last response with
``triton_final_response`` (tritonclient's asyncio ``stream_infer`` drops that option; see
docs/client.md). An error response also ends the request; its message carries
a stable prefix, because streaming drops Triton's error codes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import serialize_byte_tensor

from moonpipe_client.errors import error_from_message
from moonpipe_client.results import SKILLS, Chunk, parse_chunk

__all__ = [
    "CHANNEL_OPTIONS",
    "MODEL_NAME",
    "Settings",
    "build_request",
    "is_final",
    "parse_stream_response",
]

MODEL_NAME = "moondream"
_MAX_MESSAGE_BYTES = 2**31 - 1  # Triton's own limit (MAX_GRPC_MESSAGE_SIZE)
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
)
_FINAL_PARAM = "triton_final_response"
_LENGTH = struct.Struct("<I")  # the 4-byte length before each element of a BYTES tensor
_INT32 = struct.Struct("<i")
_STRING_OUTPUTS = {"TEXT": 0, "SVG_PATH": 1, "FINISH_REASON": 2}  # one BYTES element each
_COUNT_OUTPUTS = {"NUM_INPUT_TOKENS": 0, "NUM_OUTPUT_TOKENS": 1}  # one INT32 each
_ROW_OUTPUTS = ("POINTS", "BOXES")


@dataclass(frozen=True, slots=True)
class Settings:
    """Optional generation settings; ``None`` leaves the server's default."""

    length: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_objects: int | None = None


def _add_input(request: service_pb2.ModelInferRequest, name: str, array: np.ndarray, datatype: str) -> None:
    tensor = request.inputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    if datatype == "BYTES":
        serialized = serialize_byte_tensor(array)
        request.raw_input_contents.append(serialized.item() if serialized.size else b"")
    else:
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())


def _bytes(value: str | bytes) -> np.ndarray:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return np.array([data], dtype=np.object_)  # (1,)


def build_request(skill: str, image: bytes, prompt: str, *, stream: bool, settings: Settings,
                  request_id: str = "", model_name: str = MODEL_NAME) -> service_pb2.ModelInferRequest:
    """The ``ModelInferRequest`` for one skill call (shapes ``[1]`` as the model expects)."""
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r}; expected one of {', '.join(SKILLS)}")
    request = service_pb2.ModelInferRequest()
    request.model_name = model_name
    if request_id:
        request.id = request_id
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    _add_input(request, "SKILL", _bytes(skill), "BYTES")
    _add_input(request, "IMAGE", _bytes(image), "BYTES")
    _add_input(request, "PROMPT", _bytes(prompt), "BYTES")
    if settings.length is not None:
        _add_input(request, "LENGTH", _bytes(settings.length), "BYTES")
    if settings.max_tokens is not None:
        _add_input(request, "MAX_TOKENS", np.array([settings.max_tokens], dtype=np.int32), "INT32")
    if settings.temperature is not None:
        _add_input(request, "TEMPERATURE", np.array([settings.temperature], dtype=np.float32), "FP32")
    if settings.top_p is not None:
        _add_input(request, "TOP_P", np.array([settings.top_p], dtype=np.float32), "FP32")
    if settings.max_objects is not None:
        _add_input(request, "MAX_OBJECTS", np.array([settings.max_objects], dtype=np.int32), "INT32")
    _add_input(request, "STREAM", np.array([stream], dtype=np.bool_), "BOOL")
    return request


def is_final(response: service_pb2.ModelInferResponse) -> bool:
    """Whether ``response`` is the last one of its request."""
    params = response.parameters
    return _FINAL_PARAM in params and params[_FINAL_PARAM].bool_param


def _one_string(output: service_pb2.ModelInferResponse.InferOutputTensor, raw: bytes) -> str | None:
    """The text of a BYTES tensor of shape [1] (None if it is anything else)."""
    if output.datatype != "BYTES" or len(raw) < 4 or _LENGTH.unpack_from(raw)[0] != len(raw) - 4 \
            or len(output.shape) != 1 or output.shape[0] != 1:
        return None
    return raw[4:].decode("utf-8", errors="replace")


def _plain_chunk(response: service_pb2.ModelInferResponse, final: bool) -> Chunk | None:
    """The chunk of a response shaped as the server sends text: every tensor in the raw
    contents, strings of one element, INT32 token counts, no points or boxes; None for
    anything else (:func:`parse_chunk` over ``InferResult`` reads those). A stream sends
    one such response per token: this reads it in one pass over the outputs, without
    numpy (``InferResult.as_numpy`` scans every output for each of the seven names)."""
    outputs = response.outputs
    raw_contents = response.raw_output_contents
    if len(raw_contents) != len(outputs):
        return None
    strings: list[str | None] = [None, None, None]
    counts: list[int | None] = [None, None]
    seen: set[str] = set()
    for output, raw in zip(outputs, raw_contents):
        name = output.name
        if name in seen:
            return None
        seen.add(name)
        if name in _STRING_OUTPUTS:
            text = _one_string(output, raw)
            if text is None:
                return None
            strings[_STRING_OUTPUTS[name]] = text
        elif name in _COUNT_OUTPUTS:
            if output.datatype != "INT32" or len(raw) != 4 or len(output.shape) != 1 or output.shape[0] != 1:
                return None
            counts[_COUNT_OUTPUTS[name]] = _INT32.unpack(raw)[0]
        elif name in _ROW_OUTPUTS and (raw or 0 not in output.shape):
            return None  # points or boxes to read
    return Chunk(text=strings[0] or "", svg_path=strings[1], finish_reason=strings[2],
                 num_input_tokens=counts[0], num_output_tokens=counts[1], final=final)


def parse_stream_response(message: service_pb2.ModelStreamInferResponse) -> Chunk:
    """One stream message as a :class:`Chunk`; raises the typed error of an error message."""
    if message.error_message:
        raise error_from_message(message.error_message)
    response = message.infer_response
    final = is_final(response)
    chunk = _plain_chunk(response, final)
    return chunk if chunk is not None else parse_chunk(InferResult(response).as_numpy, final=final)
