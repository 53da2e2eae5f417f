"""`moonpipe bench triton --rest`: the gateway block of a row, its table lines and plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from moonpipe.bench.latency import Trace
from moonpipe.bench.load import RequestSpec
from moonpipe.bench.rest import _body
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
    assert "gateway / triton" in table and table.count("gateway") == 2
    assert plot_triton(doc, tmp_path / "rest.png").stat().st_size > 0


def test_rest_requests_are_streamed_moondream_captions() -> None:
    spec = RequestSpec("caption", b"\xff\xd8\xff", length="short", max_tokens=16, temperature=0.0, stream=True)
    assert _body(spec, "data:image/jpeg;base64,/9j/") == {
        "image_url": "data:image/jpeg;base64,/9j/", "length": "short", "stream": True,
        "settings": {"max_tokens": 16, "temperature": 0.0}}
    with pytest.raises(ValueError, match="streams captions only"):
        _body(RequestSpec("point", b"x", prompt="cup"), "data:,")
