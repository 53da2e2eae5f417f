"""Test-only fault injection, armed by ``MOONPIPE_TEST_FAULTS=<dir>`` in the server's
environment (never set in production). Creating ``<dir>/fail-step`` fails the next decode
step (its requests get an INTERNAL error, the engine keeps serving); creating
``<dir>/crash`` kills the scheduler thread (every pending request gets UNAVAILABLE). Each
trigger file is consumed by the step that fires it."""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["FileTriggerFaultHook", "InjectedCrash", "file_trigger_fault_hook"]

FAULTS_ENV = "MOONPIPE_TEST_FAULTS"


class InjectedCrash(BaseException):
    """Not an ``Exception``: escapes the per-step handler and kills the scheduler thread."""


class FileTriggerFaultHook:
    """The hook behind ``MOONPIPE_TEST_FAULTS`` (a class, so it pickles into a process
    compute worker)."""

    def __init__(self, trigger_dir: str) -> None:
        self.trigger_dir = trigger_dir

    def __call__(self, kind: str, seq_slots: list[int]) -> None:
        if kind != "decode":
            return
        triggers: tuple[tuple[str, BaseException], ...] = (
            ("fail-step", RuntimeError(f"injected fault in a decode step of {len(seq_slots)} rows")),
            ("crash", InjectedCrash("injected scheduler crash")),
        )
        for name, error in triggers:
            try:
                os.unlink(os.path.join(self.trigger_dir, name))  # one step per trigger file
            except FileNotFoundError:
                continue
            raise error


def file_trigger_fault_hook(trigger_dir: str) -> Callable[[str, list[int]], None]:
    return FileTriggerFaultHook(trigger_dir)
