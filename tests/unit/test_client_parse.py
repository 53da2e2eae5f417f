"""The client's response parser reads every response as tritonclient's ``InferResult`` does.

``parse_stream_response`` takes a short path for the responses a stream sends once per
token (strings of one element, INT32 counts, no points or boxes) and the general reader
for anything else; both must give the chunk (or the error) that ``parse_chunk`` over
``InferResult.as_numpy`` gives, whatever the response holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from moonpipe_client.errors import ServerError
from moonpipe_client.protocol import parse_stream_response
from moonpipe_client.results import Chunk, parse_chunk
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import serialize_byte_tensor

_NAMES = ("TEXT", "POINTS", "BOXES", "SVG_PATH", "FINISH_REASON", "NUM_INPUT_TOKENS", "NUM_OUTPUT_TOKENS",
          "UNKNOWN")
_NUMERIC = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64}

# One output: (datatype, shape, raw contents or None to send bytes_contents instead).
Output = tuple[str, tuple[int, ...], bytes | None, list[bytes]]


@st.composite
def _bytes_output(draw: st.DrawFn) -> Output:
    text = st.text(max_size=12).map(str.encode) | st.binary(max_size=12)  # invalid UTF-8 too
    items = draw(st.lists(text, min_size=0, max_size=3))
    shape = draw(st.sampled_from([(len(items),), (1, len(items))]))
    array = np.array(items, dtype=np.object_)
    raw = serialize_byte_tensor(array).item() if items else b""
    in_contents = draw(st.booleans()) and items
    return "BYTES", shape, None if in_contents else raw, items if in_contents else []


@st.composite
def _numeric_output(draw: st.DrawFn) -> Output:
    datatype = draw(st.sampled_from(sorted(_NUMERIC)))
    width = draw(st.sampled_from([1, 2, 3, 4]))
    rows = draw(st.integers(min_value=0, max_value=3))
    values = draw(st.lists(st.integers(min_value=-1000, max_value=1000), min_size=rows * width,
                           max_size=rows * width))
    array = (np.array(values, dtype=_NUMERIC[datatype]) / (8 if datatype == "FP32" else 1)).astype(_NUMERIC[datatype])
    shape = draw(st.sampled_from([(rows * width,), (rows, width)]))
    return datatype, shape, array.tobytes(), []


def _message(outputs: list[tuple[str, Output]], final: bool) -> service_pb2.ModelStreamInferResponse:
    message = service_pb2.ModelStreamInferResponse()
    response = message.infer_response
    response.parameters["triton_final_response"].bool_param = final
    raws = []
    for name, (datatype, shape, raw, contents) in outputs:
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(shape)
        tensor.contents.bytes_contents.extend(contents)
        raws.append(raw)
    # Raw contents are positional: only a prefix of the outputs can have them.
    for raw in raws:
        if raw is None:
            break
        response.raw_output_contents.append(raw)
    return message


def _reference(message: service_pb2.ModelStreamInferResponse) -> Any:
    """What the general reader makes of it: the chunk, or the type of the error it raises."""
    response = message.infer_response
    try:
        return parse_chunk(InferResult(response).as_numpy, final=response.parameters["triton_final_response"].bool_param)
    except (ServerError, ValueError) as exc:
        return type(exc)


def _parsed(message: service_pb2.ModelStreamInferResponse) -> Any:
    try:
        return parse_stream_response(message)
    except (ServerError, ValueError) as exc:
        return type(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_NAMES), _bytes_output() | _numeric_output()), max_size=8),
       st.booleans())
def test_any_response_parses_as_the_general_reader_does(outputs: list[tuple[str, Output]], final: bool) -> None:
    message = _message(outputs, final)
    assert _parsed(message) == _reference(message)


@given(st.text(max_size=40).map(str.encode) | st.binary(max_size=40), st.booleans())
def test_per_token_responses_parse_to_their_text(data: bytes, final: bool) -> None:
    """The shape the server streams: TEXT plus empty POINTS/BOXES (and counts at the end);
    bytes that are not UTF-8 (a token cut inside a character) read as U+FFFD."""
    text = data.decode("utf-8", errors="replace")
    outputs: list[tuple[str, Output]] = [
        ("TEXT", ("BYTES", (1,), serialize_byte_tensor(np.array([data], dtype=np.object_)).item(), [])),
        ("POINTS", ("FP32", (0, 2), b"", [])),
        ("BOXES", ("FP32", (0, 4), b"", [])),
    ]
    if final:
        outputs += [("FINISH_REASON", ("BYTES", (1,), serialize_byte_tensor(np.array([b"length"], dtype=np.object_))
                                       .item(), [])),
                    ("NUM_INPUT_TOKENS", ("INT32", (1,), np.array([740], np.int32).tobytes(), [])),
                    ("NUM_OUTPUT_TOKENS", ("INT32", (1,), np.array([64], np.int32).tobytes(), []))]
    message = _message(outputs, final)
    expected = Chunk(text=text, final=final, finish_reason="length" if final else None,
                     num_input_tokens=740 if final else None, num_output_tokens=64 if final else None)
    assert parse_stream_response(message) == expected == _reference(message)
