"""Unit tests of the stream iterators over scripted gRPC calls, and of CLI argument handling."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from moonpipe_client import Caption, ConnectionFailed, InvalidRequest, Point, ServerError
from moonpipe_client import stream as stream_module
from moonpipe_client.client import extract_points, extract_text
from moonpipe_client.results import ResultBuilder
from moonpipe_client.stream import AsyncStream, Stream
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor


def make_message(outputs: dict[str, Any], *, final: bool = False,
                 error: str = "") -> service_pb2.ModelStreamInferResponse:
    """A stream message as Triton sends it (str values as BYTES, arrays as FP32/INT32)."""
    message = service_pb2.ModelStreamInferResponse(error_message=error)
    response = message.infer_response
    response.parameters["triton_final_response"].bool_param = final
    for name, value in outputs.items():
        if isinstance(value, str):
            array, datatype = np.array([value.encode()], dtype=np.object_), "BYTES"
            raw = serialize_byte_tensor(array).item()
        else:
            array = np.asarray(value)
            datatype, raw = ("FP32" if array.dtype == np.float32 else "INT32"), array.tobytes()
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(raw)
    return message


class _Unreachable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses"


class ScriptedCall:
    """Plays a list of messages (or raises an exception in their place) like a gRPC call;
    ``ends``: whether the server ends the call (its status arrives) after the script."""

    def __init__(self, script: list[Any], ends: bool = True) -> None:
        self._items: Iterator[Any] = iter(script)
        self.ends = ends
        self.num_cancels = 0
        self.num_reads = 0
        self.num_end_waits = 0

    def __next__(self) -> Any:
        self.num_reads += 1
        item = next(self._items)
        if isinstance(item, BaseException):
            raise item
        return item

    async def read(self) -> Any:
        try:
            return next(self)
        except StopIteration:
            return grpc.aio.EOF

    def cancel(self) -> bool:
        self.num_cancels += 1
        return True

    def add_done_callback(self, fn: Any) -> None:
        self.num_end_waits += 1
        if self.ends:
            fn(self)

    async def code(self) -> grpc.StatusCode:
        self.num_end_waits += 1
        while not self.ends:
            await asyncio.sleep(0.01)
        return grpc.StatusCode.OK


def _caption_script() -> list[Any]:
    final = make_message({"FINISH_REASON": "stop", "NUM_INPUT_TOKENS": np.array([4], np.int32),
                          "NUM_OUTPUT_TOKENS": np.array([2], np.int32)}, final=True)
    return [make_message({"TEXT": "a "}), make_message({"TEXT": "dog"}), final]


def _stream(script: list[Any], skill: str = "caption") -> tuple[Stream[Any, Any], ScriptedCall]:
    call = ScriptedCall(script)
    extract = extract_points if skill == "point" else extract_text
    return Stream(call, ResultBuilder(skill, True), extract, "h:1"), call


def test_stream_yields_deltas_then_holds_the_result() -> None:
    stream, call = _stream(_caption_script())
    assert stream.result is None
    assert list(stream) == ["a ", "dog"]
    assert stream.result == Caption(caption="a dog", finish_reason="stop", num_input_tokens=4,
                                    num_output_tokens=2)
    stream.close()
    assert call.num_cancels == 0  # finished requests are not cancelled


def test_stream_stops_at_the_final_response_without_reading_further() -> None:
    stream, call = _stream([*_caption_script(), make_message({"TEXT": "never read"})])
    assert stream.wait().to_dict() == {"caption": "a dog"}
    assert call.num_reads == 3


def test_a_finished_stream_lets_the_server_end_the_call_before_it_is_dropped() -> None:
    # dropping (cancelling) the call as the final response arrives races Triton 2.51's end
    # of stream and can keep the model from unloading at shutdown (docs/limits.md)
    stream, call = _stream(_caption_script())
    assert stream.wait().to_dict() == {"caption": "a dog"}
    assert call.num_end_waits == 1 and call.num_cancels == 0


def test_a_call_the_server_never_ends_costs_a_bounded_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "END_WAIT_S", 0.05)
    call = ScriptedCall(_caption_script(), ends=False)
    stream: Stream[str, Caption] = Stream(call, ResultBuilder("caption", True), extract_text, "h:1")
    assert stream.wait().to_dict() == {"caption": "a dog"}
    assert call.num_end_waits == 1

    async def run() -> None:
        slow = ScriptedCall(_caption_script(), ends=False)
        astream: AsyncStream[str, Caption] = AsyncStream(lambda: slow, ResultBuilder("caption", True),
                                                         extract_text, "h:1")
        assert (await astream.wait()).to_dict() == {"caption": "a dog"}
        assert slow.num_end_waits == 1

    asyncio.run(run())


def test_closing_early_cancels_the_call() -> None:
    stream, call = _stream(_caption_script())
    with stream:
        assert next(stream) == "a "
    assert call.num_cancels == 1
    assert list(stream) == []  # closed: nothing more


def test_dropping_an_unfinished_stream_cancels_the_call() -> None:
    stream, call = _stream(_caption_script())
    next(stream)
    del stream
    assert call.num_cancels == 1


def test_stream_items_for_points() -> None:
    script = [make_message({"POINTS": np.array([[0.5, 0.25]], np.float32)}), make_message({}, final=True)]
    stream, _ = _stream(script, "point")
    assert list(stream) == [Point(0.5, 0.25)]


def test_error_response_raises_its_typed_error() -> None:
    stream, _ = _stream([make_message({"TEXT": "a"}), make_message({}, error="INVALID_ARG: IMAGE: bad")])
    assert next(stream) == "a"
    with pytest.raises(InvalidRequest, match="IMAGE: bad"):
        next(stream)
    assert stream.done


def test_stream_that_ends_without_a_final_response_is_a_server_error() -> None:
    stream, _ = _stream([make_message({"TEXT": "a"})])
    with pytest.raises(ServerError, match="before the request's final response"):
        stream.wait()


def test_transport_failure_is_a_connection_error() -> None:
    stream, _ = _stream([_Unreachable()])
    with pytest.raises(ConnectionFailed, match="h:1"):
        next(stream)


def test_async_stream_starts_lazily_and_yields_deltas() -> None:
    call = ScriptedCall(_caption_script())
    starts: list[int] = []

    def start() -> ScriptedCall:
        starts.append(1)
        return call

    async def run() -> list[str]:
        stream: AsyncStream[str, Caption] = AsyncStream(start, ResultBuilder("caption", True), extract_text, "h:1")
        assert not starts
        items = [item async for item in stream]
        assert stream.result is not None and stream.result.to_dict() == {"caption": "a dog"}
        return items

    assert asyncio.run(run()) == ["a ", "dog"]
    assert starts == [1] and call.num_cancels == 0 and call.num_end_waits == 1


def test_async_stream_aclose_cancels_and_errors_map() -> None:
    call = ScriptedCall(_caption_script())

    async def run() -> None:
        stream: AsyncStream[str, Caption]
        async with AsyncStream(lambda: call, ResultBuilder("caption", True), extract_text, "h:1") as stream:
            assert await stream.__anext__() == "a "
        assert call.num_cancels == 1
        failing: AsyncStream[str, Caption] = AsyncStream(lambda: ScriptedCall([_Unreachable()]), ResultBuilder("caption", True),
                              extract_text, "h:1")
        with pytest.raises(ConnectionFailed):
            await failing.wait()
        early: AsyncStream[str, Caption] = AsyncStream(lambda: ScriptedCall([]), ResultBuilder("caption", True), extract_text, "h:1")
        with pytest.raises(ServerError, match="final response"):
            await early.wait()

    asyncio.run(run())


def test_a_stream_closed_early_holds_the_partial_result_marked_cancelled() -> None:
    stream, call = _stream(_caption_script())
    with stream:
        assert next(stream) == "a "
    assert call.num_cancels == 1
    assert stream.result == Caption(caption="a ", finish_reason="cancelled")
    points, _ = _stream([make_message({"POINTS": np.array([[0.5, 0.25]], np.float32)}),
                         make_message({"POINTS": np.array([[0.1, 0.2]], np.float32)}),
                         make_message({}, final=True)], "point")
    assert next(points) == Point(0.5, 0.25)
    points.close()
    assert points.result is not None and points.result.to_dict() == {"points": [{"x": 0.5, "y": 0.25}]}
    assert points.result.finish_reason == "cancelled"


def test_closing_a_finished_stream_keeps_its_result() -> None:
    stream, _ = _stream(_caption_script())
    stream.wait()
    stream.close()
    assert stream.result is not None and stream.result.finish_reason == "stop"


def test_an_async_stream_closed_early_holds_the_partial_result_marked_cancelled() -> None:
    async def run() -> Caption | None:
        stream: AsyncStream[str, Caption]
        async with AsyncStream(lambda: ScriptedCall(_caption_script()), ResultBuilder("caption", True),
                               extract_text, "h:1") as stream:
            assert await stream.__anext__() == "a "
        return stream.result

    assert asyncio.run(run()) == Caption(caption="a ", finish_reason="cancelled")
