"""perf_analyzer input data and profile-export parsing (pure; perf_analyzer is not run)."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from moonpipe.bench.perf_analyzer import (
    SKILL_INPUTS,
    format_summaries,
    input_data,
    load_export,
    serialize_bytes,
    summarize_export,
)

REPO_INPUTS = Path(__file__).resolve().parents[2] / "bench" / "perf_analyzer" / "inputs"


def test_serialize_bytes_is_tritons_layout() -> None:
    assert serialize_bytes([b"ab", b""]) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)


@pytest.mark.parametrize("skill", sorted(SKILL_INPUTS))
def test_input_data_has_every_input_and_a_length_prefixed_image(skill: str) -> None:
    image = b"\x89PNG\r\n\x1a\n fake"
    doc = input_data(skill, image)
    (row,) = doc["data"]
    assert set(row) == {"SKILL", "IMAGE", "PROMPT", "LENGTH", "MAX_TOKENS", "TEMPERATURE", "TOP_P",
                        "MAX_OBJECTS", "STREAM"}
    assert row["SKILL"] == [skill]
    raw = base64.b64decode(row["IMAGE"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == len(image)
    assert raw[4:] == image
    json.dumps(doc)  # serialisable as written to disk


def test_input_data_rejects_unknown_skill() -> None:
    with pytest.raises(ValueError):
        input_data("dance", b"x")


@pytest.mark.parametrize("skill", sorted(SKILL_INPUTS))
def test_committed_input_files_hold_a_real_png(skill: str) -> None:
    path = REPO_INPUTS / f"{skill}.json"
    if not path.exists():
        pytest.skip("input files not generated")
    row = json.loads(path.read_text())["data"][0]
    raw = base64.b64decode(row["IMAGE"]["b64"])
    assert raw[4:12] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack("<I", raw[:4])[0] == len(raw) - 4


def _export() -> dict[str, object]:
    ms = 1_000_000
    return {
        "version": "2.51.0",
        "service_kind": "triton",
        "experiments": [
            {
                "experiment": {"mode": "concurrency", "value": 1},
                "requests": [
                    {"timestamp": 0, "response_timestamps": [10 * ms, 15 * ms, 20 * ms]},
                    {"timestamp": 100 * ms, "response_timestamps": [130 * ms, 140 * ms, 150 * ms]},
                    {"timestamp": 200 * ms, "response_timestamps": []},  # never answered: left out
                ],
                "window_boundaries": [0, 150 * ms],
            },
            {"experiment": {"mode": "concurrency", "value": 4}, "requests": []},
        ],
    }


def test_summarize_export_derives_ttft_and_itl() -> None:
    first, empty = summarize_export(_export())
    assert first["value"] == 1
    assert first["requests"] == 2
    assert first["responses_per_request"] == pytest.approx(3.0)
    assert first["ttft"]["p50_ms"] == pytest.approx(20.0)  # 10 and 30 ms
    assert first["itl"]["mean_ms"] == pytest.approx((5.0 + 10.0) / 2)
    assert first["latency"]["max_ms"] == pytest.approx(50.0)
    assert first["requests_per_s"] == pytest.approx(2 / 0.150)
    assert empty["requests"] == 0
    assert empty["ttft"]["n"] == 0
    assert "caption" not in format_summaries([first])  # no skill key: blank column, no crash


def test_load_export_tolerates_raw_bytes(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    text = json.dumps(_export())
    # perf_analyzer echoes BYTES inputs raw: a PNG signature is not valid UTF-8
    path.write_bytes(text[:-1].encode() + b', "request_inputs": "\x89PNG"}')
    doc = load_export(path)
    assert len(summarize_export(doc)) == 2
