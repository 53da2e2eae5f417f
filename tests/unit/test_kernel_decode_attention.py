"""The paged split-KV decode attention kernel against the plain-torch attention.

Runs on CPU under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1
without a GPU): every case compares the kernel with ``gathered_attention`` (SDPA over
the gathered pages, the CPU serving path) on the same rounded inputs.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moonpipe.kernels.decode_attention import MAX_SPLITS, choose_num_splits, paged_decode_attention
from moonpipe.model.paged import decode_reads, gathered_attention

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
HEAD_DIM = 64


def make_case(lengths: list[int], page_size: int, heads: int, dtype: torch.dtype, seed: int = 0,
              spare_pages: int = 3) -> tuple[torch.Tensor, ...]:
    """A cache with shuffled page tables: (q, k_flat, v_flat, table, positions)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(-(-n // page_size) for n in lengths) + spare_pages  # unused columns past the length
    num_pages = 1 + len(lengths) * width
    k = torch.randn((num_pages * page_size, heads, HEAD_DIM), generator=gen).to(dtype)
    v = torch.randn((num_pages * page_size, heads, HEAD_DIM), generator=gen).to(dtype)
    q = torch.randn((len(lengths), heads, HEAD_DIM), generator=gen).to(dtype)
    table = (torch.randperm(num_pages - 1, generator=gen) + 1)[: len(lengths) * width].view(len(lengths), width)
    positions = torch.tensor([n - 1 for n in lengths])
    return q, k, v, table, positions


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, positions: torch.Tensor,
              page_size: int) -> torch.Tensor:
    read, mask = decode_reads(table, positions, page_size)
    return gathered_attention(q.float()[:, None], k.float(), v.float(), read, mask)[:, 0]


def check(lengths: list[int], page_size: int, heads: int = 2, dtype: torch.dtype = torch.float32,
          num_splits: int = 1, block_n: int | None = None, seed: int = 0) -> None:
    q, k, v, table, positions = make_case(lengths, page_size, heads, dtype, seed)
    got = paged_decode_attention(q, k, v, table, positions, page_size, num_splits, block_n)
    assert got.dtype == dtype and got.shape == q.shape
    want = reference(q, k, v, table, positions, page_size)
    err = (got.float() - want).abs().max().item()
    assert err <= TOL[dtype], f"max error {err} for lengths {lengths}"


@pytest.mark.parametrize("page_size", [16, 5])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_lengths_around_page_boundaries(page_size: int, num_splits: int) -> None:
    s = page_size
    check([1, s - 1, s, s + 1, 7 * s + 3], page_size, num_splits=num_splits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype: torch.dtype) -> None:
    check([1, 17, 40, 130], 16, dtype=dtype, num_splits=2)


def test_small_blocks_many_splits_long_rows() -> None:
    """The GPU's block size (64 keys), more splits than a short row has blocks."""
    check([300, 1, 64, 65, 129], 16, num_splits=8, block_n=64)


def test_page_size_one_and_max_splits() -> None:
    check([1, 2, 33], 1, num_splits=MAX_SPLITS, block_n=64)


def test_moondream2_heads() -> None:
    check([1, 200], 16, heads=32, dtype=torch.bfloat16, num_splits=2)


def test_batch_of_64() -> None:
    check([1 + (i * 37) % 90 for i in range(64)], 16, heads=1)


def test_padding_rows_leave_real_rows_alone() -> None:
    """Graph padding: rows at position 0 whose table is all scratch page 0."""
    q, k, v, table, positions = make_case([40, 9], 16, 2, torch.float32)
    alone = paged_decode_attention(q, k, v, table, positions, 16, 2)
    pad_q = torch.cat([q, torch.randn(3, 2, HEAD_DIM)])
    pad_table = torch.cat([table, torch.zeros(3, table.shape[1], dtype=table.dtype)])
    pad_pos = torch.cat([positions, torch.zeros(3, dtype=positions.dtype)])
    padded = paged_decode_attention(pad_q, k, v, pad_table, pad_pos, 16, 2)
    assert torch.equal(padded[:2], alone)
    assert torch.isfinite(padded).all()
    assert torch.allclose(padded[2:], v[0].float().expand(3, 2, HEAD_DIM))  # one key: its value


def test_reads_only_the_real_length() -> None:
    """Keys past a row's length (and unused table columns) never reach the output."""
    q, k, v, table, positions = make_case([20, 33], 16, 2, torch.float32)
    before = paged_decode_attention(q, k, v, table, positions, 16, 1)
    k2, v2 = k.clone(), v.clone()
    for row, n in enumerate([20, 33]):
        for p in range(n, table.shape[1] * 16):
            slot = table[row, p // 16] * 16 + p % 16
            k2[slot], v2[slot] = float("nan"), float("nan")
    after = paged_decode_attention(q, k2, v2, table, positions, 16, 1)
    assert torch.equal(before, after)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(1, 160), min_size=1, max_size=6),
    page_size=st.sampled_from([1, 4, 8, 16, 32]),
    num_splits=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_random_cases(lengths: list[int], page_size: int, num_splits: int, seed: int) -> None:
    check(lengths, page_size, num_splits=num_splits, block_n=64, seed=seed)


def test_choose_num_splits() -> None:
    assert choose_num_splits(1, 32, 2048, 528) == 17  # batch 1 on an H100: spread over the SMs
    assert choose_num_splits(32, 32, 2048, 528) == 1  # a full batch fills the GPU alone
    assert choose_num_splits(1, 2, 64, 528) == 1  # never more splits than key blocks
    assert choose_num_splits(1, 1, 1 << 20, 1 << 20) == MAX_SPLITS
    with pytest.raises(ValueError, match="positive"):
        choose_num_splits(0, 32, 64, 1)


def test_bad_arguments_are_refused() -> None:
    q, k, v, table, positions = make_case([4], 16, 2, torch.float32)
    with pytest.raises(ValueError, match="num_splits"):
        paged_decode_attention(q, k, v, table, positions, 16, MAX_SPLITS + 1)
    with pytest.raises(ValueError, match="does not match"):
        paged_decode_attention(q[:, :1], k, v, table, positions, 16)
