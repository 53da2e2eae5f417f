"""``moonpipe serve`` before it starts a server: busy ports, log names, --param rendering."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from moonpipe.cli import main
from moonpipe.commands.serve import instance_paths
from moonpipe.repository import overrides_from_env, parse_override, render, set_parameter
from moonpipe.triton_local import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_busy_port_is_named_with_the_make_variable_and_flag_before_anything_starts(
        busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["serve", "--grpc-port", str(busy_port), "--http-port", str(free_port()),
                 "--metrics-port", str(free_port())])
    assert code == 1
    err = capsys.readouterr().err
    assert f"port {busy_port} (gRPC) on 127.0.0.1 is in use" in err
    assert "GRPC_PORT=" in err and "--grpc-port " in err
    assert list(tmp_path.iterdir()) == []  # no checkpoint, sample image or log made


def test_the_same_port_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["serve", "--grpc-port", str(port), "--http-port", str(port)]) == 1
    assert "the HTTP and gRPC ports are both" in capsys.readouterr().err


def test_each_instance_has_its_own_log_and_rendered_repository() -> None:
    first, second = instance_paths(9001), instance_paths(9101)
    assert first.log != second.log and "9001" in first.log.name and "9101" in second.log.name
    assert first.repository != second.repository


def test_param_overrides_share_the_docker_entrypoints_parsing() -> None:
    assert parse_override("max_batch_size=16") == ("max_batch_size", "16")
    assert parse_override("checkpoint=/a=b") == ("checkpoint", "/a=b")
    for bad in ("max_batch_size", "=3", "bad name=1"):
        with pytest.raises(ValueError):
            parse_override(bad)
    assert overrides_from_env({"MOONPIPE_PARAM_seed": "3", "OTHER": "x"}) == {"seed": "3"}


def test_render_applies_overrides_to_a_copy(tmp_path: Path) -> None:
    changes = render(ROOT / "model_repository", tmp_path / "repo", {"max_queue": "7", "new_key": 'a"b'})
    config = (tmp_path / "repo/moondream/config.pbtxt").read_text()
    assert 'key: "max_queue"        value: { string_value: "7" }' in config
    assert 'parameters: { key: "new_key" value: { string_value: "a\\"b" } }' in config
    assert changes == ["moondream: max_queue=7", 'moondream: new_key=a"b']
    assert (ROOT / "model_repository/moondream/config.pbtxt").read_text().count('"7"') == 0


def test_set_parameter_appends_in_the_files_own_one_line_style() -> None:
    text = 'parameters: { key: "device" value: { string_value: "auto" } }\n'
    assert set_parameter(text, "device", "cpu") == 'parameters: { key: "device" value: { string_value: "cpu" } }\n'


@pytest.mark.parametrize("argv", [["serve", "--param", "novalue"], ["serve", "--param", "bad name=1"]])
def test_bad_params_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "--param" in capsys.readouterr().err


def _options(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _options(subparser, f"{name} {sub}")
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield f"{name} {action.option_strings[0]}", action


def test_every_moonpipe_option_is_described_with_its_default() -> None:
    from moonpipe.cli import build_parser

    for where, action in _options(build_parser(), "moonpipe"):
        assert action.help and len(action.help.split()) >= 3, f"{where}: no description"
        if action.nargs != 0:
            assert "default" in action.help, f"{where}: the help does not say the default"
