"""Test-only fault injection: hooks for ``Engine(..., fault_hook=...)``, which run inside
every forward (``kind`` "prefill" or "decode", the step's seq rows); raising fails the step.

Through a server it is armed by ``MOONPIPE_TEST_FAULTS=<dir>`` in the server's
environment (never set in production; ``fault_hook_from_env``). Creating
``<dir>/fail-step`` fails the next decode step (its requests get an INTERNAL error, the
engine keeps serving); creating ``<dir>/crash`` kills the scheduler thread (every
pending request gets UNAVAILABLE). Each trigger file is consumed by the step that fires it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["FAULTS_ENV", "FileTriggerFaultHook", "InjectedCrash", "SwitchableFaultHook", "fault_hook_from_env"]

FAULTS_ENV = "MOONPIPE_TEST_FAULTS"


class InjectedCrash(BaseException):
    """Not an ``Exception``: escapes the per-step handler and kills the scheduler thread."""


class FileTriggerFaultHook:
    """The hook behind ``MOONPIPE_TEST_FAULTS`` (a class, so it pickles into a process
    compute worker)."""

    def __init__(self, trigger_dir: str) -> None:
        self.trigger_dir = trigger_dir

    def __call__(self, kind: str, seq_rows: list[int]) -> None:
        if kind != "decode":
            return
        triggers: tuple[tuple[str, BaseException], ...] = (
            ("fail-step", RuntimeError(f"injected fault in a decode step of {len(seq_rows)} rows")),
            ("crash", InjectedCrash("injected scheduler crash")),
        )
        for name, error in triggers:
            try:
                os.unlink(os.path.join(self.trigger_dir, name))  # one step per trigger file
            except FileNotFoundError:
                continue
            raise error


def fault_hook_from_env() -> FileTriggerFaultHook | None:
    """The file-trigger hook when ``MOONPIPE_TEST_FAULTS`` is set, else None (production)."""
    trigger_dir = os.environ.get(FAULTS_ENV)
    return FileTriggerFaultHook(trigger_dir) if trigger_dir else None


class SwitchableFaultHook:
    """A hook that does nothing until a test sets ``fault`` (thread compute worker only:
    the hook object must be the one the forwards call, not a pickled copy)."""

    def __init__(self) -> None:
        self.fault: Callable[[str, list[int]], None] | None = None

    def __call__(self, kind: str, seq_rows: list[int]) -> None:
        fault = self.fault
        if fault is not None:
            fault(kind, seq_rows)
