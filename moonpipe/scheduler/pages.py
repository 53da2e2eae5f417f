"""The KV page allocator: pure-Python bookkeeping of who holds which page.

The pages themselves are device tensors (``runtime/kv_cache.py``); only the scheduler
thread allocates and releases them, through the sequence table. A page has holders of
two kinds: sequences (its request's KV) and prefix-cache entries (an image's prefix KV,
shared read-only by every request that asks about that image). A page is reference
counted per kind and returns to the free list when its last holder lets go.

Invariants (checked by ``check()``, and against the holders' page lists by the
sequence table):
  A1 every page id in ``1..num_pages-1`` is either free (no holder) or held (refcount >= 1);
  A2 page 0 is never free and never held (the scratch page: padded batch rows and unused
     page-table columns point at it, so their writes land nowhere that matters);
  A3 ``num_free + num_held == num_pages - 1`` (no page is lost);
  A4 the two counters are exact: ``num_seq_pages`` pages have a sequence holder,
     ``num_cache_only`` pages have only cache holders.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

__all__ = ["Holder", "PageAllocator"]

Holder = Literal["seq", "cache"]


class PageAllocator:
    """Free list and per-kind reference counts of KV pages (scheduler thread only)."""

    def __init__(self, num_pages: int) -> None:
        if num_pages < 2:
            raise ValueError("PageAllocator needs at least 2 pages (page 0 is scratch)")
        self.num_pages = num_pages
        # Pop from the end: low page ids are handed out first (readable dumps).
        self._free: list[int] = list(range(num_pages - 1, 0, -1))
        self._refs: dict[Holder, dict[int, int]] = {"seq": {}, "cache": {}}
        self._cache_only = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_held(self) -> int:
        """Pages held by anyone (sequences or the prefix cache)."""
        return self.capacity - len(self._free)

    @property
    def num_seq_pages(self) -> int:
        """Pages held by at least one sequence."""
        return len(self._refs["seq"])

    @property
    def num_cache_only(self) -> int:
        """Pages held only by prefix-cache entries (reclaimable by evicting them)."""
        return self._cache_only

    @property
    def capacity(self) -> int:
        """Pages a single sequence could ever get."""
        return self.num_pages - 1

    def refs(self, page: int, holder: Holder) -> int:
        return self._refs[holder].get(page, 0)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int, holder: Holder) -> list[int]:
        """``n`` free pages, now held once by ``holder``."""
        if n > len(self._free):
            raise MemoryError(f"KV pool exhausted: {n} pages asked, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(n)]
        self.share(pages, holder)
        return pages

    def share(self, pages: Iterable[int], holder: Holder) -> None:
        """One more ``holder`` reference to each of ``pages`` (already held)."""
        refs, other = self._refs[holder], self._refs["seq" if holder == "cache" else "cache"]
        for p in pages:
            before = refs.get(p, 0)
            refs[p] = before + 1
            if before == 0:  # the page gains its first holder of this kind
                if holder == "cache" and p not in other:
                    self._cache_only += 1
                elif holder == "seq" and p in other:
                    self._cache_only -= 1

    def release(self, pages: Iterable[int], holder: Holder) -> None:
        """Drop one ``holder`` reference to each of ``pages``; a page without holders is free."""
        refs, other = self._refs[holder], self._refs["seq" if holder == "cache" else "cache"]
        for p in pages:
            count = refs.get(p, 0)
            if count <= 0:
                raise AssertionError(f"page {p} released by a {holder} that does not hold it")
            if count > 1:
                refs[p] = count - 1
                continue
            del refs[p]
            if holder == "cache" and p not in other:
                self._cache_only -= 1
            elif holder == "seq" and p in other:
                self._cache_only += 1
            if p not in other:
                self._free.append(p)

    def check(self) -> None:
        free = set(self._free)
        held = set(self._refs["seq"]) | set(self._refs["cache"])
        assert len(free) == len(self._free), "A1: a page is free twice"
        assert not free & held, "A1: a page is both free and held"
        assert all(n >= 1 for refs in self._refs.values() for n in refs.values()), "A1: a zero refcount"
        assert 0 not in free and 0 not in held, "A2: scratch page handed out"
        assert len(free) + len(held) == self.num_pages - 1, "A3: pages lost"
        assert self._cache_only == len(set(self._refs["cache"]) - set(self._refs["seq"])), "A4"
