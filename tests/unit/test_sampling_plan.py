"""Per-row step specs -> device sampling arrays."""

from __future__ import annotations

from moonpipe.scheduler.sampling_plan import plan_sampling
from moonpipe.step import Feed, Spatial, StepSpec


def test_plan_rows_flags_and_ban_padding() -> None:
    specs = [
        StepSpec(feed=Feed.TOKEN, banned_ids=(3,)),
        StepSpec(feed=Feed.COORD, spatial=Spatial.COORD, greedy=True),
        StepSpec(feed=Feed.TOKEN, mask=2, banned_ids=(0, 6)),
    ]
    plan = plan_sampling(specs, [0.7, 0.7, 0.0], [0.3, 0.3, 0.9])
    assert plan.greedy.tolist() == [False, True, True]  # spec.greedy, or temperature 0
    assert plan.mask_ids.tolist() == [0, 0, 2]
    assert plan.feed.tolist() == [int(Feed.TOKEN), int(Feed.COORD), int(Feed.TOKEN)]
    # every padded entry repeats a banned id, and the whole row is marked banned
    assert plan.banned[0].tolist() == [3, 3, 3, 3] and plan.banned_valid[0].all()
    assert plan.banned[2].tolist() == [0, 6, 0, 0] and plan.banned_valid[2].all()
    assert not plan.banned_valid[1].any()
    f = plan.flags
    assert (f.any_mask, f.any_banned, f.any_sampled, f.any_coord, f.any_size) == (True, True, True, True, False)


def test_all_greedy_text_skips_every_optional_path() -> None:
    plan = plan_sampling([StepSpec(greedy=True)] * 4, [0.5] * 4, [1.0] * 4)
    f = plan.flags
    assert not (f.any_mask or f.any_banned or f.any_sampled or f.any_coord or f.any_size)
