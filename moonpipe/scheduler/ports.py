"""What the scheduler drives, as protocols: the device side and the output side.

``ModelRunner`` (``runtime/runner.py``) implements ``StepRunner`` over the real model;
``tests/unit/fake_runner.py`` implements it with no model at all, so the scheduler's
zombies, interleavings, aborts, faults and shutdown are tested in milliseconds.
``OutputProcessor`` (``output.py``) implements ``OutputPort``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from moonpipe.step import PrefillItem, SamplingPlan, StepOutput

if TYPE_CHECKING:
    from moonpipe.output import OutputEvent

__all__ = ["OutputPort", "StepRunner"]


class StepRunner(Protocol):
    """The device side of the pipeline, addressed by slot index (``0 .. NUM_SLOTS-1``).

    Contract: every ``launch_*`` only enqueues work and returns without waiting for the
    device; work reaches the device in call order, at the latest at the next ``flush``
    or ``read_outputs``. A slot's step is launched (prefill or decode), then sampled
    (``launch_sampling``, once), then read (``read_outputs``, once) before the slot is
    launched again. ``read_outputs`` waits for the step and raises the exception of a
    failed launch, forward or sampling of *that* step (its requests fail, later steps
    run), or ``errors.DeviceLost`` when no later step can run either.
    """

    def has_image(self, key: str) -> bool:
        """Whether a prefill launched now would find this image's embedding cached (a hint)."""
        ...

    def launch_prefill(self, slot: int, items: Sequence[PrefillItem]) -> None:
        """Image encoder + prompt prefill of each item; samples later read its last hidden state."""
        ...

    def launch_decode(self, slot: int, seq_rows: np.ndarray, positions: np.ndarray,
                      page_rows: np.ndarray) -> None:
        """One decode forward: row ``i`` is seq row ``seq_rows[i]`` (B,) writing KV position
        ``positions[i]`` through its page row ``page_rows[i]`` (B, max_pages). Its input is
        whatever that seq row's previous step sampled (device memory, no host trip)."""
        ...

    def launch_sampling(self, slot: int, plan: SamplingPlan) -> None:
        """Sample the slot's step with ``plan`` (one row per row of the step) and copy the
        results to the host."""
        ...

    def flush(self) -> None:
        """Hand the work enqueued so far to the device (the scheduler calls it once per
        tick phase)."""
        ...

    def read_outputs(self, slot: int) -> list[StepOutput]:
        """Wait for the slot's step and return one output per row (see the contract)."""
        ...

    def step_times_ms(self, slot: int) -> tuple[float, float]:
        """(forward, sampling) device time of the slot's last step, once it was read."""
        ...


class OutputPort(Protocol):
    """Where the scheduler hands what a commit produced (one call per commit)."""

    def put(self, events: list[OutputEvent]) -> None: ...
