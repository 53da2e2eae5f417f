"""The prefix cache: an image's prefix KV (BOS + image tokens) computed once, then shared.

Every request about an image starts with the same ``prefix_len`` KV positions (730 for
moondream2: BOS + 729 image tokens, attended bidirectionally), whatever its prompt. The
first request computes them in its own pages; its prefill step *offers* them here, and
from then on a request about the same image takes those pages instead of prefilling the
prefix again: it prefills only its prompt, attending to the shared pages.

Which pages are shared: the ``prefix_len // page_size`` pages that hold nothing but the
prefix are shared read-only (reference counted, ``pages.py``). The page where the prefix
ends and the prompt begins (when ``prefix_len`` is not a multiple of the page size) holds
the first request's prompt too, so every later request gets a private *copy* of it (the
device copies the page right before that request's prompt forward). Copying one page is
cheaper than recomputing its prefix positions through every layer, and it keeps the KV
bit-identical to what a fresh prefill writes, so outputs do not depend on the cache.

Requests find an entry twice: at admission (a ready entry: they then allocate fewer
pages) and again when their prefill is launched (a request admitted before the entry was
ready swaps its own, never written, prefix pages for the entry's). An entry is *pending*
from the launch of the prefill that computes it until that step commits: only requests
of that same step may use it meanwhile (the device runs a step's requests in order, and
they would fail with it), later steps find it ready after the commit, and a failed step
drops it. A request that uses an entry holds the page it copies from for as long as it
lives, so an eviction can never hand that page to another request before the copy.
Entries are evicted least recently used: beyond ``capacity`` entries, and under memory
pressure when their pages would free room for a request (``evict_for``). The cache
belongs to one engine, which serves one checkpoint: keys are image content hashes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from moonpipe.scheduler.pages import PageAllocator

__all__ = ["PrefixCache", "PrefixEntry"]


@dataclass(slots=True, eq=False)
class PrefixEntry:
    """The prefix KV of one image: its pages in position order (the shared full pages,
    then the boundary page whose first positions end the prefix)."""

    key: str
    pages: tuple[int, ...]
    step_id: int | None  # the prefill step computing it; None once that step committed

    @property
    def ready(self) -> bool:
        return self.step_id is None


class PrefixCache:
    """Entries by image key, least recently used first (see module docstring)."""

    def __init__(self, capacity: int, allocator: PageAllocator, *, shared_pages: int,
                 prefix_pages: int) -> None:
        if capacity < 0:
            raise ValueError(f"prefix cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.shared_pages = shared_pages  # leading pages that hold only prefix positions
        self.prefix_pages = prefix_pages  # leading pages that hold any prefix position
        self._allocator = allocator
        self._entries: OrderedDict[str, PrefixEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    # ---------------------------------------------------------------- queries
    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[PrefixEntry]:
        return list(self._entries.values())

    def lookup(self, key: str, step_id: int | None = None) -> PrefixEntry | None:
        """The entry for ``key`` if it is ready, or pending in step ``step_id`` (not
        refreshed: ``record`` does that on use). Safe as a hint from other threads."""
        entry = self._entries.get(key)
        if entry is None or not (entry.ready or entry.step_id == step_id):
            return None
        return entry

    def reclaimable(self, keep: str | None = None) -> int:
        """Pages eviction could free now (held by no sequence), sparing entry ``keep``."""
        return sum(self._freed_by(e) for k, e in self._entries.items() if k != keep)

    def _freed_by(self, entry: PrefixEntry) -> int:
        return sum(1 for p in entry.pages
                   if self._allocator.refs(p, "seq") == 0 and self._allocator.refs(p, "cache") == 1)

    # ------------------------------------------------------------ transitions
    def record(self, key: str, hit: bool) -> None:
        """A prefill was launched with (``hit``) or without the entry of ``key``."""
        if hit:
            self.hits += 1
            if key in self._entries:  # (an entry evicted since admission: its pages live on)
                self._entries.move_to_end(key)
        else:
            self.misses += 1

    def offer(self, key: str, pages: Sequence[int], step_id: int) -> bool:
        """A prefill launched in step ``step_id`` computes ``key``'s prefix into ``pages``
        (a sequence's first ``prefix_pages``): keep them, pending. False if disabled or
        the key already has an entry."""
        if not self.enabled or key in self._entries:
            return False
        pages = tuple(pages[: self.prefix_pages])
        self._allocator.share(pages, "cache")
        self._entries[key] = PrefixEntry(key, pages, step_id)
        while len(self._entries) > self.capacity:
            self._drop(next(iter(self._entries)))
        return True

    def commit(self, step_id: int, ok: bool) -> None:
        """The step ``step_id`` committed: its entries are ready, or (``ok`` False) dropped."""
        for key, entry in list(self._entries.items()):
            if entry.step_id == step_id:
                if ok:
                    entry.step_id = None
                else:
                    self._drop(key)

    def evict_for(self, num_pages: int, keep: str | None = None) -> bool:
        """Make ``num_pages`` free by evicting least recently used entries (never ``keep``)
        whose pages no sequence holds. Evicts nothing and returns False when even
        evicting all of them would not be enough (the request waits either way)."""
        allocator = self._allocator
        if allocator.can_allocate(num_pages):
            return True
        if allocator.num_free + self.reclaimable(keep) < num_pages:
            return False
        for key, entry in list(self._entries.items()):
            if allocator.can_allocate(num_pages):
                break
            if key != keep and self._freed_by(entry):
                self._drop(key)
        return allocator.can_allocate(num_pages)

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._allocator.release(entry.pages, "cache")
