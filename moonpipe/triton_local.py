"""Run the Triton server bundled in the ``nvidia-pytriton`` wheel on this machine.

Used by ``moonpipe serve``, the e2e test fixture and the benchmarks. It knows the
gotchas of running Triton outside its container:

1. the Python-backend stub for this interpreter's version must sit next to
   ``libtriton_python.so`` (:func:`prepare_stub` copies it there);
2. the stub ignores ``PYTHONPATH`` and runs the ``python3`` first on ``PATH``: the
   server's environment puts this interpreter's ``bin/`` (the project venv) first, so the
   model repository needs no ``EXECUTION_ENV_PATH`` and the same ``config.pbtxt`` runs in
   NVIDIA's container image, where ``python3`` is the image's own;
3. the stub needs ``libpython3.X.so`` on ``LD_LIBRARY_PATH``;
4. ``--disable-auto-complete-config`` and a short ``--exit-timeout-secs``;
5. the limits of ``triton_limits.py``: the stub's shared-memory region fixed at its
   start size (oversized requests cannot grow it) and the admin APIs behind a key.

The server runs in its own session (process group), so :meth:`TritonServer.stop` can
take down the stub processes with it; shared-memory regions the stub leaves behind in
``/dev/shm`` after a crash are removed when no live process maps them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from moonpipe.errors import EngineError
from moonpipe.triton_limits import admin_key_from_env, server_limit_args

__all__ = [
    "SHM_PREFIX",
    "ServerUrls",
    "TritonServer",
    "TritonServerError",
    "build_command",
    "find_triton_root",
    "free_port",
    "port_in_use",
    "prepare_stub",
    "server_environment",
    "stale_shm_regions",
]

SHM_PREFIX = "triton_python_backend_shm_region_"
_SHM_DIR = Path("/dev/shm")


class TritonServerError(EngineError):
    """The local tritonserver could not be found, started, or did not become ready."""

    code = "SERVER"


def find_triton_root() -> Path:
    """The ``pytriton/tritonserver`` folder of the installed ``nvidia-pytriton`` wheel."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonServerError(
            "nvidia-pytriton is not installed: run `make serve` (or "
            "`pip install -r requirements.txt`) to get the bundled tritonserver"
        ) from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise TritonServerError(f"no tritonserver binary under {root}; reinstall nvidia-pytriton==0.7.0")
    return root


def prepare_stub(triton_root: Path | None = None, python_version: str | None = None) -> Path:
    """Copy the backend stub for ``python_version`` (default: this interpreter) next to
    ``libtriton_python.so``; a no-op when an identical stub is already there."""
    root = triton_root or find_triton_root()
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    source = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not source.exists():
        raise TritonServerError(f"no Python-backend stub for Python {version} under {source.parent.parent}")
    target = root / "backends" / "python" / "triton_python_backend_stub"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        tmp = target.with_suffix(".tmp")
        shutil.copy2(source, tmp)
        os.replace(tmp, target)  # atomic: a concurrently starting server never sees half a file
    return target


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on (or holds) TCP ``port`` of ``host``; what
    tritonserver's own bind would run into (``SO_REUSEADDR`` set as servers do, so a port
    in ``TIME_WAIT`` counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def server_environment(base: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None,
                       python_prefix: str | None = None) -> dict[str, str]:
    """The environment for tritonserver: ``python_prefix/bin`` first on ``PATH`` (the stub
    runs that ``python3``) and libpython's folder on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ if base is None else base)
    prefix = Path(python_prefix or sys.prefix)
    env["PATH"] = os.pathsep.join(p for p in (str(prefix / "bin"), env.get("PATH", "")) if p)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env.update(extra or {})
    return env


def build_command(triton_root: Path, model_repository: Path, *, host: str = "127.0.0.1",
                  http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                  log_verbose: int = 0, extra_args: Sequence[str] = ()) -> list[str]:
    """The tritonserver command line (loopback ports, no auto-complete, short exit wait)."""
    return [
        str(triton_root / "bin" / "tritonserver"),
        f"--model-repository={model_repository}",
        f"--backend-directory={triton_root / 'backends'}",
        "--disable-auto-complete-config",
        "--exit-timeout-secs=5",
        "--strict-readiness=true",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--allow-cpu-metrics=true",
        "--allow-gpu-metrics=false",
        f"--log-verbose={log_verbose}",
        *extra_args,
    ]


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed ``moonpipe serve`` or pytest leaves no server behind.
    libc is loaded here, in the parent: the hook itself only calls ``prctl`` (no imports or
    allocations between fork and exec)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sig = int(signal.SIGTERM)

    def hook() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return hook


def _mapped_paths() -> set[str]:
    """Every file path some live process maps or holds open (best effort, /proc)."""
    paths: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (proc / "maps").read_text(errors="replace").splitlines():
                if SHM_PREFIX in line:
                    paths.add(line.split(maxsplit=5)[-1].replace(" (deleted)", ""))
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    paths.add(os.readlink(fd))
    return paths


def stale_shm_regions(shm_dir: Path = _SHM_DIR) -> list[Path]:
    """Python-backend shared-memory regions that no live process uses any more."""
    if not shm_dir.is_dir():
        return []
    candidates = sorted(shm_dir.glob(SHM_PREFIX + "*"))
    if not candidates:
        return []
    in_use = _mapped_paths()
    return [p for p in candidates if str(p) not in in_use]


@dataclass(frozen=True, slots=True)
class ServerUrls:
    """Where a running server listens (``grpc`` is ``host:port`` as tritonclient wants it)."""

    http: str
    grpc: str
    metrics: str


class TritonServer:
    """A tritonserver child process over one model repository; a context manager.

    ``start()`` launches it (own process group, log to ``log_path``), ``wait_ready()``
    polls ``/v2/health/ready`` and fails early with the log tail if the process exits,
    ``stop()`` sends SIGTERM to the group (the stub drains on it), then SIGKILL to the whole group after a grace period, and
    removes shared-memory regions left without an owner. The admin APIs need
    ``admin_key`` (default: ``MOONPIPE_ADMIN_KEY``, else a random key: closed).
    """

    def __init__(self, model_repository: str | Path, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, host: str = "127.0.0.1",
                 log_verbose: int = 0, extra_args: Sequence[str] = (), admin_key: str | None = None) -> None:
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} does not exist")
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.env = dict(env or {})
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self.admin_key = admin_key or admin_key_from_env()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> ServerUrls:
        return ServerUrls(
            http=f"http://{self.host}:{self.http_port}",
            grpc=f"{self.host}:{self.grpc_port}",
            metrics=f"http://{self.host}:{self.metrics_port}/metrics",
        )

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Launch tritonserver (returns at once; call :meth:`wait_ready`)."""
        if self._proc is not None:
            raise TritonServerError("server already started")
        root = find_triton_root()
        prepare_stub(root)
        cmd = build_command(root, self.model_repository, host=self.host, http_port=self.http_port,
                            grpc_port=self.grpc_port, metrics_port=self.metrics_port,
                            log_verbose=self.log_verbose,
                            extra_args=[*server_limit_args(self.model_repository, self.admin_key),
                                        *self.extra_args])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=server_environment(extra=self.env), start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until ``/v2/health/ready`` answers 200; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        url = f"{self.urls.http}/v2/health/ready"
        while True:
            if self._proc is None:
                raise TritonServerError("server not started")
            code = self._proc.poll()
            if code is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {code} before it was ready; log tail:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or not ready (a 400 raises HTTPError): poll again
            if time.monotonic() > deadline:
                raise TritonServerError(
                    f"tritonserver not ready after {timeout:.0f} s; log tail:\n" + self.log_tail()
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the server and its stubs; returns its exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            # SIGTERM to the whole group: the Python-backend stub must see it too, so the
            # adapter ends in-flight streams and the model can unload (model.py).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # the group outlives its leader if a stub hung: take it down too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._remove_stale_shm()
        return proc.returncode

    @staticmethod
    def _remove_stale_shm() -> None:
        for path in stale_shm_regions():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, num_lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-num_lines:])

    def cleanup_log(self) -> None:
        """Delete the log file if this object created it."""
        if self._own_log:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
