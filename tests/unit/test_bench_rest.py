"""`moonpipe bench triton --rest`: the gateway block of a row, its table lines and plot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moonpipe.bench.latency import Trace
from moonpipe.bench.load import RequestSpec
from moonpipe.bench.rest import RunningGateway, _body
from moonpipe.bench.triton import _gateway_metrics, format_triton_table, path_metrics, plot_triton


def _traces(n: int, tokens: int, step: float) -> list[Trace]:
    return [Trace(start=i, chunk_times=[i + step * (k + 1) for k in range(tokens)], end=i + step * tokens,
                  num_output_tokens=tokens, finish_reason="length") for i in range(n)]


def test_gateway_block_compares_with_direct_grpc(tmp_path: Path) -> None:
    grpc = path_metrics(_traces(4, tokens=4, step=0.1))
    row = {"streams": 8, "in_process": grpc, "triton": grpc, "tokens_per_s_ratio": 1.0, "ttft_p50_ratio": 1.0,
           "itl_p50_ratio": 1.0, **_gateway_metrics(_traces(4, tokens=4, step=0.2), grpc)}
    assert row["gateway_tokens_per_s_ratio"] < 1.0 and row["gateway_ttft_p50_ratio"] == pytest.approx(2.0)
    doc = {"device": "cpu (test)", "torch": "x", "model": "tiny", "dtype": "float32", "workload": "w",
           "tokens_per_request": 4, "paths": ["in_process", "triton", "gateway"], "rows": [row]}
    table = format_triton_table(doc)
    assert "gateway / triton" in table and table.count("gateway") == 2  # no CPU figure: none measured
    assert plot_triton(doc, tmp_path / "rest.png").stat().st_size > 0
    row.update(_gateway_metrics(_traces(4, tokens=4, step=0.2), grpc, cpu_s=0.0016))
    assert row["gateway_cpu_us_per_token"] == pytest.approx(100.0)  # 1.6 ms over 16 tokens
    assert "gateway / triton; gateway CPU 100 us/token" in format_triton_table(doc)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_gateway_process_cpu_time_only_grows() -> None:
    gateway = RunningGateway("http://127.0.0.1:1", os.getpid())
    first = gateway.cpu_seconds()
    sum(i * i for i in range(200_000))
    second = gateway.cpu_seconds()
    assert first is not None and second is not None and 0 < first <= second
    assert RunningGateway("http://127.0.0.1:1", 2**22 + 1).cpu_seconds() is None  # no such process


def test_rest_requests_are_streamed_moondream_captions() -> None:
    spec = RequestSpec("caption", b"\xff\xd8\xff", length="short", max_tokens=16, temperature=0.0, stream=True)
    assert _body(spec, "data:image/jpeg;base64,/9j/") == {
        "image_url": "data:image/jpeg;base64,/9j/", "length": "short", "stream": True,
        "settings": {"max_tokens": 16, "temperature": 0.0}}
    with pytest.raises(ValueError, match="streams captions only"):
        _body(RequestSpec("point", b"x", prompt="cup"), "data:,")
