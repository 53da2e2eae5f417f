"""Oversized requests cannot grow the Python backend's shared memory (issue 20, item 3).

Triton copies a request's inputs into the stub's shared-memory region before the model
sees them; the region used to grow to fit (and stay grown). moonpipe.triton_limits fixes
it at ``2 * max_image_bytes + 8 MiB``: an oversized IMAGE that fits is refused by the
adapter (INVALID_ARG), a larger one by the backend itself, and the region keeps its size.
Requests of the largest accepted size still get through together.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moonpipe.triton_limits import shm_region_bytes
from reliability.conftest import Target
from reliability.support import Outcome, base_inputs, cmdline, run_raw, stub_pids, wait_idle

pytestmark = pytest.mark.reliability

MAX_IMAGE_BYTES = 33_554_432  # config.pbtxt max_image_bytes
MIB = 1 << 20


def _region(target: Target) -> Path:
    """The stub's shared-memory region, as the stub sees it (its second argument)."""
    pid = stub_pids(target.pgid)[0]
    name = cmdline(pid).split(b"\0")[2].decode()
    return Path(f"/proc/{pid}/root/dev/shm") / name


def _burst(target: Target, images: list[bytes], concurrency: int, **settings: Any) -> list[Outcome]:
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def send(image: bytes) -> None:
        outcome = run_raw(target.grpc_url, base_inputs("caption", image, **settings), timeout=300)
        with lock:
            outcomes.append(outcome)

    for start in range(0, len(images), concurrency):
        threads = [threading.Thread(target=send, args=(image,)) for image in images[start:start + concurrency]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    return outcomes


def test_a_burst_of_oversized_requests_leaves_the_shm_region_at_its_fixed_size(target: Target) -> None:
    region = _region(target)
    bound = shm_region_bytes(MAX_IMAGE_BYTES)  # 72 MiB
    assert os.stat(region).st_size == bound
    fits = b"\x89PNG" + b"\x00" * (60 * MIB)  # over max_image_bytes, fits the region
    huge = b"\x89PNG" + b"\x00" * (96 * MIB)  # larger than the region
    outcomes = _burst(target, [fits] * 4 + [huge] * 4, concurrency=4)
    assert len(outcomes) == 8
    for outcome in outcomes:
        assert outcome.rpc_error is None and outcome.error is not None and not outcome.responses
        assert ("INVALID_ARG: IMAGE:" in outcome.error and "over the limit" in outcome.error) or (
            "Failed to increase the shared memory pool size" in outcome.error), outcome.error
    assert any("INVALID_ARG" in (o.error or "") for o in outcomes)  # the adapter saw some
    stat = os.stat(region)
    assert stat.st_size == bound, f"the region grew to {stat.st_size / MIB:.0f} MiB"
    assert stat.st_blocks * 512 <= bound
    wait_idle(target.metrics_url)


def test_images_of_the_largest_accepted_size_still_get_through_together(target: Target) -> None:
    from PIL import Image

    side = 2900  # a 2900 x 2900 BMP is 24 MiB, close to max_image_bytes
    images = []
    for seed in range(4):
        pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="BMP")
        images.append(buf.getvalue())
    outcomes = _burst(target, images, concurrency=4, max_tokens=1)
    assert [o.error for o in outcomes] == [None] * 4
    assert all(o.final for o in outcomes)
    assert os.stat(_region(target)).st_size == shm_region_bytes(MAX_IMAGE_BYTES)
