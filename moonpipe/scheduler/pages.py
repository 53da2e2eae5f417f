"""The KV page allocator: pure-Python bookkeeping of which sequence owns which page.

The pages themselves are device tensors (``runtime/kv_cache.py``); only the scheduler
thread allocates and releases them, through the sequence table.

Invariants (checked by ``check()`` and the tests):
  A1 every page id in ``1..num_pages-1`` is either free or owned by exactly one sequence;
  A2 page 0 is never free and never owned (the scratch page: padded batch rows and unused
     page-table columns point at it, so their writes land nowhere that matters);
  A3 ``num_free + num_in_use == num_pages - 1`` (no page is lost).
Admission reserves a sequence's worst case at once, so a running sequence never waits
for a page (no over-commit, no preemption).
"""

from __future__ import annotations

__all__ = ["PageAllocator"]


class PageAllocator:
    """Free list of KV pages. Owned by the scheduler thread; not thread-safe by design."""

    def __init__(self, num_pages: int) -> None:
        if num_pages < 2:
            raise ValueError("PageAllocator needs at least 2 pages (page 0 is scratch)")
        self.num_pages = num_pages
        # Pop from the end: low page ids are handed out first (readable dumps).
        self._free: list[int] = list(range(num_pages - 1, 0, -1))
        self._owner: dict[int, str] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_in_use(self) -> int:
        return len(self._owner)

    @property
    def capacity(self) -> int:
        """Pages a single sequence could ever get."""
        return self.num_pages - 1

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int, owner: str) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"KV pool exhausted: {n} pages asked, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._owner[p] = owner
        return pages

    def release(self, pages: list[int], owner: str) -> None:
        for p in pages:
            got = self._owner.pop(p, None)
            if got != owner:
                raise AssertionError(f"page {p} released by {owner!r} but owned by {got!r}")
            self._free.append(p)

    def check(self) -> None:
        free = set(self._free)
        assert len(free) == len(self._free), "A1: a page is free twice"
        assert not free & set(self._owner), "A1: a page is both free and owned"
        assert 0 not in free and 0 not in self._owner, "A2: scratch page handed out"
        assert len(free) + len(self._owner) == self.num_pages - 1, "A3: pages lost"
