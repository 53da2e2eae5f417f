"""Turn one step's per-row ``StepSpec`` objects into the arrays the device samples with.

Built on the scheduler thread when a step is sampled (at launch when every spec is known,
else after the previous commit), then staged into the slot by the runner. The batch-wide
flags let the device skip whole code paths (no mask, no bans, all greedy, no spatial).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moonpipe.step import MAX_BANNED, SamplingFlags, SamplingPlan, Spatial, StepSpec

__all__ = ["plan_sampling"]


def plan_sampling(specs: Sequence[StepSpec], temperatures: Sequence[float],
                  top_ps: Sequence[float]) -> SamplingPlan:
    """``specs[i]`` with the request's ``temperatures[i]`` / ``top_ps[i]`` for row ``i``."""
    b = len(specs)
    greedy = np.fromiter((sp.greedy or t <= 0.0 for sp, t in zip(specs, temperatures)), dtype=np.bool_, count=b)
    mask_ids = np.fromiter((sp.mask for sp in specs), dtype=np.int64, count=b)
    feed = np.fromiter((int(sp.feed) for sp in specs), dtype=np.int64, count=b)
    banned = np.zeros((b, MAX_BANNED), dtype=np.int64)
    banned_valid = np.zeros((b, MAX_BANNED), dtype=np.bool_)
    for row, sp in enumerate(specs):
        if sp.banned_ids:
            n = len(sp.banned_ids)
            banned[row, :n] = sp.banned_ids
            # Pad with a duplicate of a banned id, itself banned: the device's scatter then
            # writes the same value to every duplicate index (no write race).
            banned[row, n:] = sp.banned_ids[0]
            banned_valid[row, :] = True
    spatial = {sp.spatial for sp in specs}
    flags = SamplingFlags(
        any_mask=bool(mask_ids.any()),
        any_banned=bool(banned_valid.any()),
        any_sampled=not bool(greedy.all()),
        any_coord=Spatial.COORD in spatial,
        any_size=Spatial.SIZE in spatial,
    )
    return SamplingPlan(
        temperature=np.asarray(temperatures, dtype=np.float32),
        top_p=np.asarray(top_ps, dtype=np.float32),
        greedy=greedy, mask_ids=mask_ids, banned=banned, banned_valid=banned_valid, feed=feed,
        flags=flags,
    )
