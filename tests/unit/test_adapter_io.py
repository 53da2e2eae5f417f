"""The Triton-free half of the adapter: tensors -> Request, Result -> tensors, parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "model_repository" / "moondream" / "1"))

from moondream_io import (
    PendingDelta,
    adapter_config_from_parameters,
    engine_config_from_parameters,
    error_message,
    final_outputs,
    parse_request,
    read_parameters,
    stream_outputs,
)

from moonpipe.errors import EngineStopped, InvalidRequest, RequestFailed
from moonpipe.request import Box, Delta, Point, Result

LIMIT = 1000


def s(text: str | bytes) -> np.ndarray:
    return np.array([text.encode() if isinstance(text, str) else text], dtype=np.object_)


def base(**extra: np.ndarray | None) -> dict[str, np.ndarray | None]:
    arrays: dict[str, np.ndarray | None] = {"SKILL": s("caption"), "IMAGE": s(b"\x89PNG...")}
    arrays.update(extra)
    return arrays


def test_parse_request_reads_every_typed_input() -> None:
    req = parse_request(base(SKILL=s("Point"), PROMPT=s("cup"), MAX_TOKENS=np.array([7], np.int32),
                             TEMPERATURE=np.array([0.5], np.float32), TOP_P=np.array([0.9], np.float32),
                             MAX_OBJECTS=np.array([3], np.int32), STREAM=np.array([True])), "r1", LIMIT)
    assert (req.request_id, req.skill, req.prompt, req.max_tokens, req.max_objects) == ("r1", "point", "cup", 7, 3)
    assert req.temperature == pytest.approx(0.5) and req.top_p == pytest.approx(0.9)
    assert req.stream is True and req.image == b"\x89PNG..."


def test_optional_inputs_default_to_the_skill_defaults() -> None:
    req = parse_request(base(PROMPT=None), "r", LIMIT)
    assert (req.length, req.max_tokens, req.temperature, req.top_p, req.stream) == ("normal", None, None, None, False)


@pytest.mark.parametrize(("arrays", "prefix"), [
    ({"SKILL": None}, "SKILL: missing"),
    ({"IMAGE": None}, "IMAGE: missing"),
    ({"SKILL": s("describe")}, "SKILL: unknown skill"),
    ({"SKILL": s(b"\xff\xfe")}, "SKILL: not valid UTF-8"),
    ({"IMAGE": s(b"")}, "IMAGE: empty"),
    ({"IMAGE": s(b"x" * (LIMIT + 1))}, "IMAGE: 1001 bytes is over the limit"),
    ({"MAX_TOKENS": np.array([8.0], np.float32)}, "MAX_TOKENS: expected INT32"),
    ({"MAX_TOKENS": np.array([1, 2], np.int32)}, "MAX_TOKENS: expected one element"),
    ({"MAX_TOKENS": np.array([0], np.int32)}, "MAX_TOKENS: must be in"),
    ({"TEMPERATURE": np.array([np.nan], np.float32)}, "TEMPERATURE:"),
    ({"TOP_P": np.array([1.5], np.float32)}, "TOP_P:"),
    ({"STREAM": np.array([1], np.int32)}, "STREAM: expected BOOL"),
    ({"LENGTH": s("epic")}, "LENGTH:"),
    ({"SKILL": s("query")}, "PROMPT:"),
    ({"EXTRA": s("x")}, "EXTRA: unknown input"),
])
def test_bad_tensors_raise_invalid_request_naming_the_input(
        arrays: dict[str, np.ndarray | None], prefix: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(base(**arrays), "r", LIMIT)
    assert str(info.value).startswith(prefix), str(info.value)


def test_error_message_carries_the_code_once() -> None:
    assert error_message(InvalidRequest("PROMPT: too long")) == "INVALID_ARG: PROMPT: too long"
    assert error_message(EngineStopped("UNAVAILABLE: stopping")) == "UNAVAILABLE: stopping"
    assert error_message(RequestFailed("boom")) == "INTERNAL: boom"
    assert error_message(RuntimeError("x")) == "INTERNAL: x"


def test_coalesced_deltas_become_one_stream_response() -> None:
    pending = PendingDelta()
    assert not pending
    pending.add(Delta(text="a "))
    pending.add(Delta(text="cat", points=(Point(0.1, 0.2),)))
    pending.add(Delta(boxes=(Box(0.1, 0.2, 0.3, 0.4),)))
    out = stream_outputs(pending)
    assert out["TEXT"].tolist() == [b"a cat"]
    assert out["POINTS"].shape == (1, 2) and out["POINTS"].dtype == np.float32
    assert out["BOXES"].tolist() == [[pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.3), pytest.approx(0.4)]]


def test_final_outputs_whole_result_or_the_unsent_rest() -> None:
    result = Result(request_id="r", skill="point", finish_reason="stop", text="",
                    points=(Point(0.5, 0.5), Point(0.25, 0.75)), num_input_tokens=9, num_output_tokens=4)
    whole = final_outputs(result, None, stream=False)
    assert whole["POINTS"].shape == (2, 2) and whole["BOXES"].shape == (0, 4)
    assert whole["FINISH_REASON"].tolist() == [b"stop"]
    assert whole["NUM_INPUT_TOKENS"].dtype == np.int32 and whole["NUM_OUTPUT_TOKENS"].tolist() == [4]
    rest = PendingDelta()
    rest.add(Delta(points=(Point(0.25, 0.75),)))
    streamed = final_outputs(result, rest, stream=True)
    assert streamed["POINTS"].shape == (1, 2)  # only what was not streamed yet
    assert final_outputs(result, None, stream=True)["POINTS"].shape == (0, 2)


def _params(**values: str) -> dict[str, str]:
    config = {"parameters": {k: {"string_value": v} for k, v in values.items()}}
    return read_parameters(config)


def test_engine_config_from_parameters(tmp_path: Path) -> None:
    params = _params(checkpoint="./ckpt", device="cpu", dtype="auto", max_batch_size="4", cuda_graphs="false",
                     pipeline_depth="1", cancel_check_interval_ms="50")
    config = engine_config_from_parameters(params, tmp_path, env={})
    assert config.checkpoint == str((tmp_path / "ckpt").resolve())
    assert (config.device, config.dtype, config.max_batch_size, config.cuda_graphs, config.pipeline_depth) == (
        "cpu", "float32", 4, False, 1)
    assert adapter_config_from_parameters(params).cancel_check_interval_ms == 50


def test_the_checkpoint_parameter_may_be_a_name_resolved_beside_the_repository(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    by_name = engine_config_from_parameters(_params(checkpoint="tiny", device="cpu"), repository, env={})
    assert by_name.checkpoint == str(tmp_path / "checkpoints" / "tiny")  # no path in config.pbtxt
    relative = engine_config_from_parameters(_params(checkpoint="../weights/md2", device="cpu"), repository, env={})
    assert relative.checkpoint == str(tmp_path / "weights" / "md2")
    absolute = engine_config_from_parameters(_params(checkpoint="/srv/md2", device="cpu"), repository, env={})
    assert absolute.checkpoint == "/srv/md2"


def test_checkpoint_environment_variable_overrides_the_parameter(tmp_path: Path) -> None:
    config = engine_config_from_parameters(_params(checkpoint="ckpt", device="cpu"), tmp_path,
                                           env={"MOONPIPE_CHECKPOINT": "/data/md2"})
    assert config.checkpoint == "/data/md2"


@pytest.mark.parametrize(("params", "needle"), [
    ({"max_batch_size": "eight"}, "'max_batch_size': expected an integer"),
    ({"max_batch_size": "0"}, "max_batch_size must be a positive int"),
    ({"cuda_graphs": "maybe"}, "'cuda_graphs': expected true or false"),
    ({"pipeline_depth": "3"}, "pipeline_depth"),
    ({"max_bach_size": "8"}, "'max_bach_size' is unknown"),
    ({"checkpoint": ""}, "'checkpoint' is empty"),
])
def test_bad_parameters_fail_naming_the_parameter(tmp_path: Path, params: dict[str, str], needle: str) -> None:
    values = {"checkpoint": "ckpt", "device": "cpu", "dtype": "float32", **params}
    with pytest.raises(ValueError, match=needle):
        engine_config_from_parameters(_params(**values), tmp_path, env={})


def test_bad_adapter_parameter_fails() -> None:
    with pytest.raises(ValueError, match="stats_interval_ms"):
        adapter_config_from_parameters(_params(stats_interval_ms="0"))


def test_the_shipped_config_pbtxt_parameters_are_all_valid(tmp_path: Path) -> None:
    import re

    text = (Path(__file__).resolve().parents[2] / "model_repository" / "moondream" / "config.pbtxt").read_text()
    pairs = re.findall(r'key: "(\w+)"\s+value: \{ string_value: "([^"]*)" \}', text)
    params = dict(pairs)
    assert {"checkpoint", "device", "dtype", "max_batch_size", "num_kv_pages", "kv_page_size",
            "pipeline_depth", "cuda_graphs"} <= set(params)
    assert "/" not in params["checkpoint"]  # a name: Triton shows config.pbtxt to every client
    config = engine_config_from_parameters({**params, "device": "cpu", "dtype": "float32"}, tmp_path, env={})
    assert config.checkpoint.endswith("checkpoints/tiny")
    adapter_config_from_parameters(params)


def test_an_oversized_image_names_the_parameter_that_raises_the_limit() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(base(IMAGE=s(b"x" * (LIMIT + 1))), "r", LIMIT)
    assert "max_image_bytes" in str(info.value) and "--param max_image_bytes=" in str(info.value)
