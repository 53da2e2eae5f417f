"""Fixtures of the reliability suite.

``target`` wraps the session's shared server (``tests/conftest.py``'s ``triton_server``);
``fault_server`` and ``fresh_server_factory`` start dedicated servers (free loopback
ports, their own temporary model repository) for tests that break or stop them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reliability.support import make_repository, start_server


@dataclass(frozen=True, slots=True)
class Target:
    """A running server as the reliability tests see it."""

    grpc_url: str
    http_url: str
    metrics_url: str
    server: Any  # moonpipe.triton_local.TritonServer

    @property
    def pgid(self) -> int:
        pid = self.server.pid
        assert pid is not None
        return int(pid)

    def log_tail(self, lines: int = 40) -> str:
        return str(self.server.log_tail(lines))

    def log_text(self) -> str:
        return str(self.server.log_text())


def _target(server: Any) -> Target:
    urls = server.urls
    return Target(grpc_url=urls.grpc, http_url=urls.http, metrics_url=urls.metrics, server=server)


@pytest.fixture(scope="session")
def target(triton_server: Any) -> Target:
    """The session's shared server (started once for e2e and reliability tests)."""
    return _target(triton_server.server)


# Small limits make the queue limit reachable and the fault scenarios deterministic:
# at most 4 sequences decode together, at most 4 more wait.
FAULT_PARAMETERS = {"max_batch_size": "4", "max_queue": "4", "stats_interval_ms": "100",
                    "cancel_check_interval_ms": "50"}


@pytest.fixture(scope="module")
def fault_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A dedicated server with the adapter's test-only fault injection armed
    (``MOONPIPE_TEST_FAULTS``, moonpipe/testing.py): creating ``<fault_dir>/fail-step``
    fails the next decode step, ``<fault_dir>/crash`` kills the scheduler thread.
    ``server.fault_dir`` is that folder."""
    base = tmp_path_factory.mktemp("fault-server")
    fault_dir = base / "triggers"
    fault_dir.mkdir()
    repository = make_repository(base / "model_repository", FAULT_PARAMETERS)
    server = start_server(repository, tiny_checkpoint, base / "server.log",
                          env={"MOONPIPE_TEST_FAULTS": str(fault_dir)})
    server.fault_dir = fault_dir
    try:
        yield _target(server)
    finally:
        server.stop()


@pytest.fixture
def fresh_server_factory(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[Callable[..., Target]]:
    """Start dedicated servers with changed ``config.pbtxt`` parameters; all are stopped
    at the end of the test."""
    servers: list[Any] = []

    def start(parameters: dict[str, str] | None = None) -> Target:
        base = tmp_path / f"server-{len(servers)}"
        repository = make_repository(base / "model_repository", parameters)
        server = start_server(repository, tiny_checkpoint, base / "server.log")
        servers.append(server)
        return _target(server)

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
