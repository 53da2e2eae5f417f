"""CPU affinity of the engine's threads.

With a process compute worker on CPU, the worker holds core(s) of its own and the
engine's host threads (scheduler, output, copy, event reader) are pinned to the rest, so
a burst of host work never preempts a forward (``runtime/device_process.py``).
"""

from __future__ import annotations

import logging
import os

__all__ = ["pin_thread"]

log = logging.getLogger("moonpipe.affinity")


def pin_thread(cpus: frozenset[int] | None) -> None:
    """Restrict the calling thread to ``cpus`` (Linux; a no-op for None or elsewhere)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:  # e.g. a container that forbids it: run unpinned, say so
            log.warning("cannot pin a thread to CPUs %s: %s", sorted(cpus), exc)
