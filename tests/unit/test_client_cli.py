"""Unit tests of the CLI's argument handling (no server: failures happen before connecting)."""

from __future__ import annotations

from pathlib import Path

import pytest
from moonpipe_client.cli import EXIT_FAILED, EXIT_UNREACHABLE, build_parser, main


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
