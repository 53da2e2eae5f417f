"""End-to-end tests of the ``moonpipe-client`` command run as a subprocess against the real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def _command() -> list[str]:
    script = Path(sys.executable).parent / "moonpipe-client"
    return [str(script)] if script.exists() else [sys.executable, "-m", "moonpipe_client"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_command(), *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_images")
    rng = np.random.default_rng(7)
    for i in range(3):
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "nested").mkdir()
    Image.new("RGB", (40, 30), (200, 50, 50)).save(folder / "nested" / "red.jpg")
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder


def test_caption_json_has_the_finish_reason_and_token_counts(triton_server: Any, images: Path) -> None:
    done = run_cli("--url", triton_server.grpc_url, "caption", str(images / "img0.png"), "--json",
                   "--max-tokens", "4")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert set(record) == {"caption", "finish_reason", "num_input_tokens", "num_output_tokens"}
    assert record["finish_reason"] in {"stop", "length"}
    assert record["num_input_tokens"] > 0 and 1 <= record["num_output_tokens"] <= 4


def test_query_streams_text(triton_server: Any, images: Path) -> None:
    done = run_cli("query", str(images / "img0.png"), "What is this?", "--stream", "--max-tokens", "4",
                   "--url", triton_server.grpc_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n")


@pytest.mark.parametrize(("skill", "key"), [("point", "points"), ("detect", "objects"), ("segment", "segments")])
def test_spatial_json_and_draw(triton_server: Any, images: Path, tmp_path: Path, skill: str, key: str) -> None:
    out = tmp_path / f"{skill}.png"
    extra = ["--max-tokens", "40"] if skill == "segment" else ["--max-objects", "3"]
    done = run_cli("--url", triton_server.grpc_url, skill, str(images / "img1.png"), "thing", "--json",
                   "--draw", str(out), *extra)
    assert done.returncode == 0, done.stderr
    shape = json.loads(done.stdout)
    assert next(iter(shape)) == key and isinstance(shape[key], list) and "finish_reason" in shape
    with Image.open(out) as drawn:
        assert drawn.format == "PNG" and drawn.size == (64, 48)


def test_batch_detect_writes_one_line_per_image(triton_server: Any, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    done = run_cli("--url", triton_server.grpc_url, "detect", "--images", str(images), "--object", "thing",
                   "--out", str(out), "--concurrency", "3", "--max-objects", "2")
    assert done.returncode == 1, done.stderr  # one image is broken: recorded, batch still completes
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_image = {line["image"]: line for line in lines}
    assert set(by_image) == {"img0.png", "img1.png", "img2.png", "nested/red.jpg", "broken.png"}
    assert by_image["broken.png"]["error"]["type"] == "InvalidRequest"
    for name in ("img0.png", "img1.png", "img2.png", "nested/red.jpg"):
        assert isinstance(by_image[name]["objects"], list)
        assert by_image[name]["finish_reason"] in {"stop", "length"}
    assert "4 ok, 1 failed" in done.stderr


def test_errors_have_clear_messages_and_exit_codes(triton_server: Any, images: Path) -> None:
    bad = run_cli("--url", triton_server.grpc_url, "caption", str(images / "broken.png"))
    assert bad.returncode == 1 and "invalid request: IMAGE" in bad.stderr
    unreachable = run_cli("--url", "127.0.0.1:1", "--timeout", "10", "caption", str(images / "img0.png"))
    assert unreachable.returncode == 3 and "cannot reach the moonpipe server" in unreachable.stderr
    usage = run_cli("query", str(images / "img0.png"))
    assert usage.returncode == 2 and "needs the question" in usage.stderr


def _batch(url: str, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--url", url, "detect", "--images", str(images), "--object", "thing", "--out", str(out),
                   "--concurrency", "3", "--max-objects", "2", *extra)


def test_batch_resume_runs_only_what_is_missing(triton_server: Any, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    done_before = [json.dumps({"image": "img0.png", "objects": [], "finish_reason": "stop"}),
                   json.dumps({"image": "gone.png", "objects": [], "finish_reason": "stop"})]
    failed_before = json.dumps({"image": "img1.png", "error": {"type": "ServerError", "message": "x"}})
    out.write_text("\n".join([*done_before, failed_before]) + "\n")
    done = _batch(triton_server.grpc_url, images, out, "--resume")
    assert "1 image(s) already done, 4 to run" in done.stderr, done.stderr
    lines = out.read_text().splitlines()
    assert lines[:2] == done_before  # kept as they were, even for an image no longer in the folder
    names = [json.loads(line)["image"] for line in lines]
    assert sorted(names) == sorted(["img0.png", "gone.png", "img1.png", "img2.png", "nested/red.jpg",
                                    "broken.png"])  # img1 ran again; nothing twice
    again = _batch(triton_server.grpc_url, images, out, "--resume")
    assert "4 image(s) already done, 1 to run" in again.stderr  # only the broken image is retried
    assert len(out.read_text().splitlines()) == 6


def test_batch_append_keeps_the_old_lines(triton_server: Any, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"note": "from before"}\n')
    _batch(triton_server.grpc_url, images, out, "--append")
    lines = out.read_text().splitlines()
    assert lines[0] == '{"note": "from before"}' and len(lines) == 6


@pytest.mark.parametrize("port_of", ["http_url", "metrics_url"])
def test_tritons_http_and_metrics_ports_are_unreachable_with_a_hint(triton_server: Any, images: Path,
                                                                    port_of: str) -> None:
    port = getattr(triton_server, port_of).split(":")[-1].split("/")[0]
    done = run_cli("--url", f"127.0.0.1:{port}", "--timeout", "20", "caption", str(images / "img0.png"))
    assert done.returncode == 3, done.stderr
    assert "gRPC port (8001 by default" in done.stderr


def test_http_scheme_in_the_url_works(triton_server: Any, images: Path) -> None:
    done = run_cli("--url", f"http://{triton_server.grpc_url}", "caption", str(images / "img0.png"),
                   "--max-tokens", "2")
    assert done.returncode == 0, done.stderr
