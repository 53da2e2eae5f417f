"""Unit tests of the client's wire format, result parsing and error mapping (no server)."""

from __future__ import annotations

import numpy as np
import pytest
from moonpipe_client.errors import (
    Cancelled,
    ConnectionFailed,
    InvalidRequest,
    MoonpipeError,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
    error_from_grpc,
    error_from_message,
)
from moonpipe_client.protocol import Settings, build_request, is_final, parse_stream_response
from moonpipe_client.results import (
    Answer,
    Box,
    Caption,
    Detection,
    Point,
    Points,
    Result,
    ResultBuilder,
    Segment,
)
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import serialize_byte_tensor

_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL"}


def make_message(outputs: dict[str, object], *, final: bool = False, flag: bool = True,
                 error: str = "") -> service_pb2.ModelStreamInferResponse:
    """A stream message as Triton would send it: BYTES for str values, typed arrays otherwise."""
    message = service_pb2.ModelStreamInferResponse()
    if error:
        message.error_message = error
        return message
    response = message.infer_response
    response.model_name = "moondream"
    if flag:
        response.parameters["triton_final_response"].bool_param = final
    for name, value in outputs.items():
        tensor = response.outputs.add()
        tensor.name = name
        if isinstance(value, str):
            array = np.array([value.encode()], dtype=np.object_)
            tensor.datatype = "BYTES"
            raw = serialize_byte_tensor(array).item()
        else:
            array = np.asarray(value)
            tensor.datatype = _DTYPES[array.dtype]
            raw = array.tobytes()
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(raw)
    return message


def _inputs(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    wrapped = service_pb2.ModelInferResponse(outputs=[
        service_pb2.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in request.inputs
    ], raw_output_contents=request.raw_input_contents)
    result = InferResult(wrapped)
    return {t.name: result.as_numpy(t.name) for t in request.inputs}


def test_build_request_sends_required_inputs_and_asks_for_the_final_flag() -> None:
    request = build_request("query", b"\x89PNG...", "what is this?", stream=True, settings=Settings())
    assert request.model_name == "moondream"
    assert request.parameters["triton_enable_empty_final_response"].bool_param is True
    inputs = _inputs(request)
    assert set(inputs) == {"SKILL", "IMAGE", "PROMPT", "STREAM"}
    assert inputs["SKILL"].tolist() == [b"query"]
    assert inputs["IMAGE"].tolist() == [b"\x89PNG..."]
    assert inputs["PROMPT"].tolist() == [b"what is this?"]
    assert inputs["STREAM"].tolist() == [True]
    assert all(list(t.shape) == [1] for t in request.inputs)


def test_build_request_sends_only_the_settings_given() -> None:
    settings = Settings(length="short", max_tokens=7, temperature=0.5, top_p=0.9, max_objects=3)
    request = build_request("caption", b"img", "", stream=False, settings=settings)
    datatypes = {t.name: t.datatype for t in request.inputs}
    assert datatypes == {"SKILL": "BYTES", "IMAGE": "BYTES", "PROMPT": "BYTES", "LENGTH": "BYTES",
                         "MAX_TOKENS": "INT32", "TEMPERATURE": "FP32", "TOP_P": "FP32",
                         "MAX_OBJECTS": "INT32", "STREAM": "BOOL"}
    inputs = _inputs(request)
    assert inputs["LENGTH"].tolist() == [b"short"]
    assert inputs["MAX_TOKENS"].tolist() == [7]
    assert inputs["TEMPERATURE"].tolist() == [0.5]
    assert inputs["TOP_P"].tolist() == pytest.approx([0.9])
    assert inputs["MAX_OBJECTS"].tolist() == [3]
    assert inputs["STREAM"].tolist() == [False]


def test_build_request_rejects_an_unknown_skill() -> None:
    with pytest.raises(ValueError, match="unknown skill"):
        build_request("gaze", b"img", "", stream=False, settings=Settings())


def test_parse_stream_response_reads_every_output() -> None:
    message = make_message({
        "TEXT": "a cat",
        "POINTS": np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32),
        "BOXES": np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32),
        "SVG_PATH": "M 0 0 L 1 1 Z",
        "FINISH_REASON": "length",
        "NUM_INPUT_TOKENS": np.array([12], dtype=np.int32),
        "NUM_OUTPUT_TOKENS": np.array([5], dtype=np.int32),
    }, final=True)
    chunk = parse_stream_response(message)
    assert chunk.final
    assert chunk.text == "a cat"
    assert chunk.points == (Point(0.1, 0.2), Point(0.3, 0.4))  # float32 read back as short decimals
    assert chunk.boxes == (Box(0.1, 0.2, 0.3, 0.4),)
    assert chunk.svg_path == "M 0 0 L 1 1 Z"
    assert (chunk.finish_reason, chunk.num_input_tokens, chunk.num_output_tokens) == ("length", 12, 5)


def test_parse_stream_response_of_an_empty_final_response() -> None:
    chunk = parse_stream_response(make_message({}, final=True))
    assert chunk.final and chunk.text == "" and chunk.points == () and chunk.finish_reason is None


def test_final_flag_absent_means_not_final() -> None:
    message = make_message({"TEXT": "x"}, flag=False)
    assert not is_final(message.infer_response)
    assert not parse_stream_response(message).final


def test_parse_stream_response_rejects_malformed_boxes() -> None:
    message = make_message({"BOXES": np.array([0.1, 0.2, 0.3], dtype=np.float32)})
    with pytest.raises(ServerError, match="BOXES"):
        parse_stream_response(message)


@pytest.mark.parametrize(("message", "kind", "text"), [
    ("INVALID_ARG: IMAGE: empty image", InvalidRequest, "IMAGE: empty image"),
    ("UNAVAILABLE: queue full, retry later", ServerUnavailable, "queue full, retry later"),
    ("CANCELLED: the request was cancelled", Cancelled, "the request was cancelled"),
    ("INTERNAL: forward failed", ServerError, "forward failed"),
    ("Failed to process the request(s), message: INVALID_ARG: PROMPT: empty", InvalidRequest, "PROMPT: empty"),
    ("something odd happened", ServerError, "something odd happened"),
])
def test_error_messages_map_to_typed_errors(message: str, kind: type[MoonpipeError], text: str) -> None:
    error = error_from_message(message)
    assert type(error) is kind
    assert str(error) == text
    with pytest.raises(kind, match=text.split(",")[0]):
        parse_stream_response(make_message({}, error=message))


def test_grpc_failures_map_to_typed_errors() -> None:
    unreachable = error_from_grpc("StatusCode.UNAVAILABLE", "failed to connect to all addresses", "h:1")
    assert isinstance(unreachable, ConnectionFailed)
    assert isinstance(unreachable, ServerUnavailable) and isinstance(unreachable, ConnectionError)
    assert "h:1" in str(unreachable) and "failed to connect" in str(unreachable)
    late = error_from_grpc("DEADLINE_EXCEEDED", "Deadline Exceeded", "h:1")
    assert isinstance(late, RequestTimeout) and isinstance(late, TimeoutError)
    assert isinstance(error_from_grpc("CANCELLED", "Cancelled", "h:1"), Cancelled)
    assert isinstance(error_from_grpc("INVALID_ARGUMENT", "unexpected input 'X'", "h:1"), InvalidRequest)
    assert isinstance(error_from_grpc("NOT_FOUND", "unknown model", "h:1"), ServerError)
    # The server's own prefix wins over the transport status.
    assert isinstance(error_from_grpc("UNKNOWN", "INVALID_ARG: bad", "h:1"), InvalidRequest)
    assert isinstance(error_from_grpc(None, "plain", "h:1"), ServerError)


def test_an_internal_core_error_after_the_deadline_is_a_timeout() -> None:
    """gRPC sometimes reports an expired deadline as INTERNAL (grpc/grpc#2685): seen in the
    e2e suite with a 1 ms timeout under load."""
    core = ("INTERNAL", "Internal error from Core", "h:1")
    assert isinstance(error_from_grpc(*core, deadline_passed=True), RequestTimeout)
    assert type(error_from_grpc(*core)) is ServerError  # before the deadline: what it says
    # the server's own INTERNAL error keeps its meaning, whenever it arrives
    server = error_from_grpc("INTERNAL", "INTERNAL: the engine failed", "h:1", deadline_passed=True)
    assert type(server) is ServerError


def _build(skill: str, stream: bool, messages: list[service_pb2.ModelStreamInferResponse]) -> Result:
    builder = ResultBuilder(skill, stream)
    for message in messages:
        builder.add(parse_stream_response(message))
    assert builder.done
    return builder.build()


def _done(**outputs: object) -> service_pb2.ModelStreamInferResponse:
    base: dict[str, object] = {"FINISH_REASON": "stop", "NUM_INPUT_TOKENS": np.array([9], dtype=np.int32),
                               "NUM_OUTPUT_TOKENS": np.array([3], dtype=np.int32)}
    return make_message({**base, **outputs}, final=True)


def test_streamed_text_deltas_concatenate() -> None:
    messages = [make_message({"TEXT": "A "}), make_message({"TEXT": "red "}), make_message({"TEXT": "car"}),
                _done()]
    result = _build("caption", True, messages)
    assert result == Caption(caption="A red car", finish_reason="stop", num_input_tokens=9, num_output_tokens=3)
    assert result.to_dict() == {"caption": "A red car"}


def test_non_streamed_text_is_the_whole_answer() -> None:
    result = _build("query", False, [_done(TEXT="Yes.")])
    assert isinstance(result, Answer)
    assert result.to_dict() == {"answer": "Yes."}
    assert (result.finish_reason, result.num_input_tokens, result.num_output_tokens) == ("stop", 9, 3)


def test_streamed_points_accumulate() -> None:
    first = make_message({"POINTS": np.array([[0.25, 0.5]], dtype=np.float32)})
    second = make_message({"POINTS": np.array([[0.75, 0.125]], dtype=np.float32)})
    result = _build("point", True, [first, second, _done()])
    assert isinstance(result, Points)
    assert result.to_dict() == {"points": [{"x": 0.25, "y": 0.5}, {"x": 0.75, "y": 0.125}]}


def test_detection_to_dict() -> None:
    boxes = np.array([[0.0, 0.25, 0.5, 0.75], [0.5, 0.5, 1.0, 1.0]], dtype=np.float32)
    result = _build("detect", False, [_done(BOXES=boxes)])
    assert isinstance(result, Detection)
    assert result.to_dict() == {"objects": [
        {"x_min": 0.0, "y_min": 0.25, "x_max": 0.5, "y_max": 0.75},
        {"x_min": 0.5, "y_min": 0.5, "x_max": 1.0, "y_max": 1.0},
    ]}
    assert _build("detect", False, [_done(BOXES=np.zeros((0, 4), np.float32))]).to_dict() == {"objects": []}


def test_segment_to_dict() -> None:
    box = np.array([[0.25, 0.25, 0.75, 0.5]], dtype=np.float32)
    result = _build("segment", False, [_done(BOXES=box, SVG_PATH="M 0.3 0.3 L 0.7 0.3 L 0.5 0.5 Z")])
    assert isinstance(result, Segment)
    assert result.to_dict() == {"segments": [{
        "path": "M 0.3 0.3 L 0.7 0.3 L 0.5 0.5 Z",
        "bbox": {"x_min": 0.25, "y_min": 0.25, "x_max": 0.75, "y_max": 0.5},
    }]}
    assert Segment().to_dict() == {"segments": []}


def test_results_are_frozen() -> None:
    caption = Caption(caption="x")
    with pytest.raises(AttributeError):
        caption.caption = "y"  # type: ignore[misc]


def test_to_record_adds_the_finish_reason_and_token_counts() -> None:
    caption = Caption(caption="a dog", finish_reason="length", num_input_tokens=740, num_output_tokens=2)
    assert caption.to_record() == {"caption": "a dog", "finish_reason": "length", "num_input_tokens": 740,
                                   "num_output_tokens": 2}
    assert Detection(objects=()).to_record()["objects"] == []
