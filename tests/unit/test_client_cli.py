"""Unit tests of the CLI's argument handling (no server: failures happen before connecting)."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from moonpipe_client import ConnectionFailed
from moonpipe_client.cli import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, build_parser, main
from moonpipe_client.cli_options import SKILL_OPTIONS
from moonpipe_client.errors import error_from_grpc
from PIL import Image


def test_parser_accepts_connection_options_before_and_after_the_skill() -> None:
    parser = build_parser()
    args = parser.parse_args(["--url", "a:1", "detect", "img.png", "cup", "--timeout", "5", "--json"])
    assert (args.url, args.timeout, args.skill, args.image, args.text, args.json) == ("a:1", 5.0, "detect",
                                                                                      "img.png", "cup", True)
    args = parser.parse_args(["caption", "img.png", "--url", "b:2", "--length", "short", "--stream"])
    assert (args.url, args.length, args.stream) == ("b:2", "short", True)


@pytest.mark.parametrize("argv", [
    ["query", "img.png"],  # no question
    ["caption"],  # no image
    ["detect", "img.png", "cup", "--object", "dog"],  # text twice
    ["caption", "img.png", "--length", "huge"],
    ["detect", "img.png", "cup", "--images", "dir"],  # both
    ["point", "--images", "dir", "cup", "--draw", "x.png"],
    ["caption", "img.png", "--timeout", "0"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "moonpipe-client" in capsys.readouterr().err


def test_missing_image_file_exits_1_with_a_clear_message(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--url", "127.0.0.1:1", "caption", str(tmp_path / "missing.png")])
    assert code == EXIT_FAILED
    assert "no such file" in capsys.readouterr().err


def test_batch_on_a_folder_without_images_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", "--images", str(tmp_path), "--object", "cup"]) == EXIT_FAILED
    assert "no image files" in capsys.readouterr().err


def test_unreachable_server_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG fake")
    assert main(["--url", "127.0.0.1:1", "--timeout", "5", "caption", str(image)]) == EXIT_UNREACHABLE
    assert "cannot reach the moonpipe server at 127.0.0.1:1" in capsys.readouterr().err


# ---------------------------------------------------------------- what a new user hits (issue 19)


@pytest.fixture
def http_port() -> Iterator[int]:
    """A plain HTTP/1 server on a free port (like Triton's HTTP or metrics port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log on the test's stderr."""


def _png(path: Path) -> Path:
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def test_unreachable_server_leaves_an_existing_batch_output_untouched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    _png(photos / "a.png")
    out = tmp_path / "results.jsonl"
    before = "".join(json.dumps({"image": f"{i}.png", "objects": []}) + "\n" for i in range(4))
    out.write_text(before)
    for mode in ([], ["--append"], ["--resume"]):
        code = main(["--url", "127.0.0.1:1", "--timeout", "5", "detect", "--images", str(photos),
                     "--object", "person", "--out", str(out), *mode])
        assert code == EXIT_UNREACHABLE
        assert "cannot reach" in capsys.readouterr().err
        assert out.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "results.jsonl"]  # no temp file left


def test_a_port_that_does_not_speak_grpc_is_unreachable_with_a_port_hint(
        tmp_path: Path, http_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    image = _png(tmp_path / "x.png")
    assert main(["--url", f"127.0.0.1:{http_port}", "--timeout", "10", "caption", str(image)]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert f"127.0.0.1:{http_port}" in err
    assert "8001" in err and "HTTP" in err  # names Triton's gRPC port and what answered instead


@pytest.mark.parametrize(("port", "what"), [(8000, "HTTP"), (8002, "metrics")])
def test_triton_http_and_metrics_ports_get_named(port: int, what: str) -> None:
    error = error_from_grpc("UNAVAILABLE", f"failed to connect to all addresses; last error: "
                            f"UNAVAILABLE: ipv4:127.0.0.1:{port}: Socket closed", f"127.0.0.1:{port}")
    assert isinstance(error, ConnectionFailed)
    assert f"{port} is Triton's {what} port" in str(error) and "8001" in str(error)


def test_a_url_with_a_scheme_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _png(tmp_path / "x.png")
    assert main(["--url", "http://127.0.0.1:1/", "--timeout", "5", "caption", str(image)]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert "Misformatted" not in err and "cannot reach the moonpipe server at http://127.0.0.1:1" in err
    with pytest.raises(SystemExit) as info:
        main(["--url", "ftp://127.0.0.1:1", "caption", str(image)])
    assert info.value.code == EXIT_USAGE
    assert "unknown scheme ftp://" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "takers"), [
    (["caption", "img.png", "--max-objects", "3"], "point, detect"),
    (["point", "img.png", "cup", "--max-tokens", "9"], "caption, query, segment"),
    (["detect", "img.png", "cup", "--temperature=0.5"], "caption, query"),
    (["segment", "img.png", "cup", "--stream"], "caption, query, point, detect"),
    (["query", "img.png", "why?", "--length", "short"], "caption"),
])
def test_a_flag_of_another_skill_says_which_skills_take_it(argv: list[str], takers: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    flag = next(a for a in argv if a.startswith("--")).split("=")[0]
    assert f"{flag} is an option of {takers}, not of {argv[0]}" in err


def _all_parsers() -> list[argparse.ArgumentParser]:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *subs[0].choices.values()]


def test_every_option_is_described_with_its_default() -> None:
    for parser in _all_parsers():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or not action.option_strings:
                continue
            where = f"{parser.prog} {action.option_strings[0]}"
            assert action.help and len(action.help.split()) >= 3, f"{where}: no description"
            takes_value = action.nargs != 0
            if takes_value and "same as" not in action.help:
                assert "default" in action.help, f"{where}: the help does not say the default"


def test_skills_are_described_by_what_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for skill, words in {"caption": "describe", "query": "answer", "point": "point", "detect": "box",
                         "segment": "outline"}.items():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(skill + " "))
        assert words in line.lower(), line
        assert line.split(None, 1)[1].strip() != f"{skill} an image"


@pytest.mark.parametrize("argv", [
    ["detect", "--images", "d", "--object", "x", "--resume"],  # stdout cannot be resumed
    ["detect", "--images", "d", "--object", "x", "--out", "r.jsonl", "--resume", "--append"],
    ["detect", "img.png", "x", "--append"],  # a batch option without --images
    ["caption", "img.png", "--header", "no separator"],
    ["caption", "img.png", "--client-cert", "c.pem"],  # without its key
])
def test_batch_and_connection_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    assert "moonpipe-client" in capsys.readouterr().err


def test_the_server_defaults_quoted_in_the_help_are_moonpipes() -> None:
    from moonpipe.skills.registry import (
        DEFAULT_MAX_OBJECTS,
        DEFAULT_MAX_TOKENS,
        DEFAULT_TEMPERATURE,
        DEFAULT_TOP_P,
    )

    quoted = {o.flag: o.kwargs["help"] for o in SKILL_OPTIONS}
    for flag, value in (("--max-tokens", DEFAULT_MAX_TOKENS), ("--temperature", DEFAULT_TEMPERATURE),
                        ("--top-p", DEFAULT_TOP_P), ("--max-objects", DEFAULT_MAX_OBJECTS)):
        assert f"{value:g} on moonpipe" in quoted[flag]
