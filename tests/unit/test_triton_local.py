"""moonpipe.triton_local without starting a server: command line, environment, stub, shm."""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
from pathlib import Path

import pytest

from moonpipe.triton_local import (
    SHM_PREFIX,
    TritonServer,
    TritonServerError,
    build_command,
    free_port,
    port_in_use,
    prepare_stub,
    server_environment,
    stale_shm_regions,
)


def test_command_binds_loopback_and_disables_auto_complete(tmp_path: Path) -> None:
    cmd = build_command(tmp_path / "triton", tmp_path / "repo", http_port=1, grpc_port=2, metrics_port=3)
    assert cmd[0] == str(tmp_path / "triton" / "bin" / "tritonserver")
    for flag in ("--disable-auto-complete-config", "--exit-timeout-secs=5", "--http-address=127.0.0.1",
                 "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1", "--http-port=1", "--grpc-port=2",
                 "--metrics-port=3", f"--model-repository={tmp_path / 'repo'}",
                 f"--backend-directory={tmp_path / 'triton' / 'backends'}"):
        assert flag in cmd


def test_environment_puts_the_venv_first_and_libpython_on_the_loader_path() -> None:
    env = server_environment(base={"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"},
                             extra={"MOONPIPE_CHECKPOINT": "/ckpt"}, python_prefix="/venv")
    assert env["PATH"].split(os.pathsep)[:2] == ["/venv/bin", "/usr/bin"]
    libdir = sysconfig.get_config_var("LIBDIR")
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == libdir
    assert env["LD_LIBRARY_PATH"].endswith("/opt/lib")
    assert env["MOONPIPE_CHECKPOINT"] == "/ckpt"


def _fake_triton_root(tmp_path: Path, version: str) -> Path:
    root = tmp_path / "tritonserver"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").write_text("")
    (root / "backends" / "python").mkdir(parents=True)
    stub_dir = root / "python_backend_stubs" / version
    stub_dir.mkdir(parents=True)
    (stub_dir / "triton_python_backend_stub").write_bytes(b"stub-" + version.encode())
    return root


def test_prepare_stub_copies_the_interpreter_stub_next_to_the_backend(tmp_path: Path) -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = _fake_triton_root(tmp_path, version)
    target = prepare_stub(root)
    assert target == root / "backends" / "python" / "triton_python_backend_stub"
    assert target.read_bytes() == b"stub-" + version.encode()
    assert prepare_stub(root) == target  # idempotent


def test_prepare_stub_names_a_missing_version(tmp_path: Path) -> None:
    root = _fake_triton_root(tmp_path, "3.11")
    with pytest.raises(TritonServerError, match=r"Python 3\.7"):
        prepare_stub(root, python_version="3.7")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_stale_shm_regions_skips_regions_a_process_holds(tmp_path: Path) -> None:
    held = tmp_path / f"{SHM_PREFIX}held"
    stale = tmp_path / f"{SHM_PREFIX}stale"
    other = tmp_path / "unrelated"
    for path in (held, stale, other):
        path.write_bytes(b"x")
    with open(held, "rb"):
        assert stale_shm_regions(tmp_path) == [stale]
    assert stale_shm_regions(tmp_path / "missing") == []


def test_server_refuses_a_missing_repository_and_urls_are_loopback(tmp_path: Path) -> None:
    with pytest.raises(TritonServerError, match="does not exist"):
        TritonServer(tmp_path / "nope")
    server = TritonServer(tmp_path, http_port=1, grpc_port=2, metrics_port=3)
    assert (server.urls.http, server.urls.grpc, server.urls.metrics) == (
        "http://127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3/metrics")
    assert server.stop() is None and not server.running()
    server.cleanup_log()


def test_serve_command_parses_its_flags_and_writes_a_sample_image(tmp_path: Path) -> None:
    from PIL import Image

    from moonpipe.cli import build_parser
    from moonpipe.commands.serve import write_sample_image

    args = build_parser().parse_args(["serve", "--checkpoint", str(tmp_path), "--grpc-port", "9001",
                                      "--http-port", "9000", "--metrics-port", "9002"])
    assert (args.checkpoint, args.grpc_port, args.http_port, args.metrics_port) == (str(tmp_path), 9001, 9000, 9002)
    assert args.host == "127.0.0.1"
    path = write_sample_image(tmp_path / "sample.png")
    with Image.open(path) as image:
        assert image.size == (320, 240)


def test_port_in_use_sees_a_listener_and_a_free_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", free_port())
