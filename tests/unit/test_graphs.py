"""Bucket arithmetic of the CUDA-graph path (pure Python)."""

from __future__ import annotations

import pytest

from moonpipe.runtime.graphs import batch_buckets, bucket_for, page_buckets


def test_batch_buckets_cover_every_size() -> None:
    for max_batch in (1, 3, 8, 20, 32, 64):
        buckets = batch_buckets(max_batch)
        assert buckets[-1] == max_batch and buckets == sorted(set(buckets))
        for n in range(1, max_batch + 1):
            b = bucket_for(n, buckets)
            assert n <= b <= max_batch
            assert b < 2 * n or b - n < 8  # padding stays bounded


def test_page_buckets_are_powers_of_two_then_the_cap() -> None:
    assert page_buckets(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert page_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    with pytest.raises(ValueError):
        bucket_for(129, page_buckets(128))
