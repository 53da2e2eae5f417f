"""moonpipe.triton_limits: the tritonserver flags for the shm region and the admin APIs
(the real server's behaviour is in tests/reliability/test_shm_bound.py and
test_server_exposure.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import moonpipe.triton_local as triton_local
from moonpipe.triton_limits import (
    GROWTH_STEP_BYTES,
    admin_key_from_env,
    dev_shm_bounds,
    max_image_bytes_of,
    python_backend_shm_args,
    restricted_api_args,
    server_limit_args,
    shm_region_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def test_the_region_holds_two_images_of_the_largest_accepted_size() -> None:
    assert shm_region_bytes(32 * MIB) == 72 * MIB
    assert python_backend_shm_args(32 * MIB) == [
        f"--backend-config=python,shm-default-byte-size={72 * MIB}",
        f"--backend-config=python,shm-growth-byte-size={GROWTH_STEP_BYTES}"]
    assert GROWTH_STEP_BYTES >= 1 << 40  # no /dev/shm holds a step: the region never grows
    least, most = dev_shm_bounds(32 * MIB)
    assert least > shm_region_bytes(32 * MIB) and most >= 256 * MIB >= least
    with pytest.raises(ValueError):
        shm_region_bytes(0)


def test_admin_apis_are_restricted_in_triton_251_syntax() -> None:
    http, grpc = restricted_api_args("k3y")
    assert http == "--http-restricted-api=model-repository,shared-memory,trace,logging:moonpipe-admin-key=k3y"
    assert grpc == "--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:moonpipe-admin-key=k3y"
    for open_api in ("inference", "health", "metadata", "model-config", "statistics"):
        assert open_api not in http.split(":")[0].split("=")[1].split(",")
    for bad in ("", " k", "a:b", "a=b", "a,b"):
        with pytest.raises(ValueError, match="MOONPIPE_ADMIN_KEY"):
            restricted_api_args(bad)


def test_no_admin_key_means_a_random_one() -> None:
    assert admin_key_from_env({"MOONPIPE_ADMIN_KEY": "mine"}) == "mine"
    first, second = admin_key_from_env({}), admin_key_from_env({"MOONPIPE_ADMIN_KEY": ""})
    assert first != second and len(first) >= 24


def test_the_region_follows_the_repositorys_max_image_bytes(tmp_path: Path) -> None:
    assert max_image_bytes_of(ROOT / "model_repository") == 32 * MIB
    model = tmp_path / "moondream"
    model.mkdir()
    (model / "config.pbtxt").write_text('parameters: { key: "max_image_bytes" value: { string_value: "1048576" } }\n')
    assert max_image_bytes_of(tmp_path) == MIB
    assert f"shm-default-byte-size={10 * MIB}" in server_limit_args(tmp_path, "k")[0]
    assert max_image_bytes_of(tmp_path / "elsewhere") == 32 * MIB  # EngineConfig's default


def test_the_module_prints_the_flags_for_the_entrypoint() -> None:
    proc = subprocess.run([sys.executable, "-m", "moonpipe.triton_limits", str(ROOT / "model_repository")],
                          env={"MOONPIPE_ADMIN_KEY": "abc", "PATH": "/usr/bin"}, capture_output=True,
                          text=True, timeout=60, check=True)
    assert proc.stdout.splitlines() == server_limit_args(ROOT / "model_repository", "abc")


def test_triton_server_starts_with_the_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    class FakePopen:
        def __init__(self, cmd: list[str], **kwargs: Any) -> None:
            started.append(cmd)
            self.pid = 0

    monkeypatch.setattr(triton_local.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(triton_local, "prepare_stub", lambda root: root)
    server = triton_local.TritonServer(ROOT / "model_repository", admin_key="k3y", log_path=tmp_path / "log",
                                       extra_args=["--log-info=true"])
    server.start()
    (cmd,) = started
    limits = server_limit_args(ROOT / "model_repository", "k3y")
    assert cmd[-len(limits) - 1:] == [*limits, "--log-info=true"]
    assert triton_local.TritonServer(ROOT / "model_repository").admin_key  # random when not given
