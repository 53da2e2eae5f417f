"""Step telemetry: the totals the pipeline benchmark divides (measuring.md columns)."""

from __future__ import annotations

import pytest

from moonpipe.telemetry import Telemetry


def _decode(t: Telemetry, now: float, forward: float, batch: int = 4) -> None:
    t.record_step(prefill=False, batch=batch, zombies=0, forward_ms=forward, sampling_ms=0.5, now=now,
                  outputs=batch)


def test_period_and_its_forward_cover_the_same_steady_state_steps() -> None:
    t = Telemetry()
    t.record_step(prefill=True, batch=4, zombies=0, forward_ms=50.0, sampling_ms=0.5, now=0.0, outputs=4)
    _decode(t, 0.010, forward=1.0, batch=1)  # right after a prefill: ramp-up, no interval
    _decode(t, 0.015, forward=4.0)
    _decode(t, 0.020, forward=4.0)
    t.idle_gap()  # the scheduler slept: the next commit opens no interval either
    _decode(t, 1.0, forward=4.0)
    _decode(t, 1.006, forward=5.0)
    tot = t.reset_totals()
    assert tot.decode_steps == 5 and tot.forward_ms == pytest.approx(18.0)
    assert tot.periods == 3
    assert tot.period_ms == pytest.approx(5.0 + 5.0 + 6.0)
    assert tot.period_forward_ms == pytest.approx(4.0 + 4.0 + 5.0)
    assert tot.period_sampling_ms == pytest.approx(1.5)
    assert t.reset_totals().periods == 0  # reset
