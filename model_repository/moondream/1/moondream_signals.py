"""Stop-signal handling of the moondream adapter: drain on SIGTERM.

Triton unloads a decoupled model only after its in-flight requests ended, and calls
``finalize`` only after that; a long stream would hold the server past its exit timeout,
after which Triton 2.51 exits hard with the streams still open. So on the signal the
adapter stops accepting, lets requests finish for a while, then shuts the engine down:
every request left gets ``UNAVAILABLE: the server is shutting down``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

__all__ = ["StopSignalWatch"]


class StopSignalWatch:
    """Calls ``on_stop`` (on a thread of its own) when the stub receives SIGTERM.

    The stub's main thread sits in C++, where a Python handler would not run; the C-level
    handler writes to a wakeup fd and this thread reacts. The signal must reach the stub:
    send it to the server's process group (``kill -TERM -<pgid>``), as ``moonpipe serve``
    and the container entrypoint do. Raises ``ValueError`` off the main thread.
    """

    def __init__(self, on_stop: Callable[[], None], log: Callable[[str], None]) -> None:
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        # SIGTERM only: the stub keeps its own SIGINT disposition (replacing it kept the
        # model from unloading in our runs); `moonpipe serve` and the container
        # entrypoint stop the server's group with SIGTERM.
        signal.signal(signal.SIGTERM, lambda *_: None)  # installs the C handler feeding the fd
        signal.set_wakeup_fd(write_fd)
        self._on_stop = on_stop
        self._log = log
        threading.Thread(target=self._run, name="moonpipe-signals", daemon=True).start()

    def _run(self) -> None:
        while True:  # the wakeup fd reports every signal that has a Python handler
            data = os.read(self._read_fd, 1)
            if not data or data[0] == signal.SIGTERM:
                break
        self._log("moonpipe: SIGTERM received: draining")
        self._on_stop()
