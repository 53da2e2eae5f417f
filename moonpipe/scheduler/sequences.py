"""SequenceTable: the one owner of every request's lifecycle inside the scheduler.

It holds the sequences from submit to release, the KV page allocator, the prefix cache
and the seq rows, and is the only code that changes ``Sequence.state``. The scheduler
thread alone uses it.

Invariants (``check()`` asserts them; the tests call it after every transition):
  S1 every live sequence (added, not released) is in exactly one place that matches its
     state: the waiting queue (WAITING), the admitted queue (ADMITTED), the running set
     (RUNNING) or the zombies (FINISHED, still in a launched step);
  S2 a sequence holds pages and a seq row exactly while it is ADMITTED, RUNNING or a
     zombie; its row of ``page_rows`` lists its pages, then the scratch page 0; every
     other row is all 0; no two sequences share a row;
  S3 a sequence is released once, only when FINISHED and no launched step references it
     (the caller says so: the pipeline counts references), and then leaves the table;
  S4 the allocator's A1-A4 hold, and every page's reference counts are exactly the number
     of sequences of S2 and of prefix-cache entries that list it.
Admission is FIFO and reserves a sequence's worst case of pages at once, so a running
sequence never waits for memory. A sequence whose image has a ready prefix-cache entry
takes the entry's full pages (counted once, however many share them) and allocates the
rest; unused entries are evicted before a request has to wait (``prefix_cache.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

from moonpipe.config import KVLayout
from moonpipe.scheduler.pages import Holder, PageAllocator
from moonpipe.scheduler.prefix_cache import PrefixCache, PrefixEntry
from moonpipe.scheduler.sequence import SeqState, Sequence

__all__ = ["SequenceTable"]


class SequenceTable:
    """Lifecycle, pages and seq rows of the scheduler's sequences (see module docstring)."""

    def __init__(self, max_rows: int, layout: KVLayout, prefix_cache_size: int = 0) -> None:
        self.layout = layout
        self.allocator = PageAllocator(layout.num_pages)
        self.prefix_cache = PrefixCache(
            prefix_cache_size, self.allocator, shared_pages=layout.num_shared_prefix_pages,
            prefix_pages=layout.pages_needed(layout.prefix_len))
        # (max_rows + 1, max_pages) page ids per seq row; the last row is the padding
        # rows' scratch row and stays all 0 (scratch page).
        self.page_rows = np.zeros((max_rows + 1, layout.max_pages_per_seq), dtype=np.int64)
        self._free_rows: list[int] = list(range(max_rows - 1, -1, -1))
        self._live: dict[str, Sequence] = {}  # by request id, in submit order
        self._waiting: deque[Sequence] = deque()
        self._admitted: deque[Sequence] = deque()
        self._running: dict[Sequence, None] = {}  # an ordered set: prefill order
        self._zombies: set[Sequence] = set()

    # ---------------------------------------------------------------- queries
    def get(self, request_id: str) -> Sequence | None:
        return self._live.get(request_id)

    def live(self) -> list[Sequence]:
        """Every sequence not yet released, in submit order."""
        return list(self._live.values())

    @property
    def admitted(self) -> deque[Sequence]:
        """Sequences ready for their prefill, in admission order (read only)."""
        return self._admitted

    def decodable(self) -> list[Sequence]:
        """Running sequences that may launch another output, in prefill order."""
        return [s for s in self._running if s.num_launched < s.max_outputs]

    @property
    def num_queued(self) -> int:
        return len(self._waiting) + len(self._admitted)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_zombies(self) -> int:
        return len(self._zombies)

    @property
    def is_idle(self) -> bool:
        """Nothing waits, nothing runs (zombies end with the steps that carry them)."""
        return not (self._waiting or self._admitted or self._running)

    # ------------------------------------------------------------ transitions
    def add(self, seq: Sequence) -> None:
        """A new WAITING sequence (its request id must not be live)."""
        assert seq.state is SeqState.WAITING and seq.request_id not in self._live
        self._live[seq.request_id] = seq
        self._waiting.append(seq)

    def admit(self, now: float) -> None:
        """WAITING -> ADMITTED in FIFO order while a seq row and the head's pages are free
        (the head waits for pages; submit rejected what can never fit). A ready prefix-cache
        entry of the head's image saves it the shared pages; unused entries are evicted
        rather than let it wait, its own entry last."""
        cache = self.prefix_cache
        while self._waiting and self._free_rows:
            seq = self._waiting[0]
            entry = cache.lookup(seq.image_key) if seq.prompt_ids else None
            total = self.layout.pages_needed(seq.num_positions)
            private = total - cache.shared_pages if entry is not None else total
            if not cache.evict_for(private, keep=seq.image_key if entry is not None else None):
                if entry is None or not cache.evict_for(total):  # its own entry goes too
                    return
                entry, private = None, total
            self._waiting.popleft()
            seq.page_ids = tuple(self.allocator.allocate(private, "seq"))
            if entry is not None:
                self._use_entry(seq, entry, own_prefix_pages=0)
            seq.seq_row = self._free_rows.pop()
            self._write_page_row(seq)
            seq.state = SeqState.ADMITTED
            seq.timings.admitted = now
            self._admitted.append(seq)

    def start_prefill(self, n: int, step_id: int) -> list[Sequence]:
        """The ``n`` oldest ADMITTED sequences become RUNNING: step ``step_id`` prefills
        them. Each takes its image's prefix-cache entry if one is usable now (ready, or
        offered by an earlier sequence of this step), or offers its own prefix."""
        seqs = [self._admitted.popleft() for _ in range(n)]
        cache = self.prefix_cache
        for s in seqs:
            s.state = SeqState.RUNNING
            s.position = s.num_prompt_tokens
            s.num_launched = 1
            self._running[s] = None
            if not cache.enabled:
                continue
            if not s.cached_prefix:
                entry = cache.lookup(s.image_key, step_id) if s.prompt_ids else None
                if entry is not None:  # its own prefix pages were never written: swap them
                    self._use_entry(s, entry, own_prefix_pages=cache.shared_pages)
                    self._write_page_row(s)
                else:
                    cache.offer(s.image_key, s.page_ids, step_id)
            cache.record(s.image_key, hit=s.cached_prefix)
        return seqs

    def boundary_dst(self, seq: Sequence) -> int:
        """With a cached prefix: the page of ``seq`` the entry's boundary page is copied into."""
        return seq.page_ids[self.prefix_cache.shared_pages] if seq.boundary_src else 0

    def _use_entry(self, seq: Sequence, entry: PrefixEntry, *, own_prefix_pages: int) -> None:
        """Make ``seq``'s KV start with ``entry``'s shared pages, releasing its own first
        ``own_prefix_pages`` (allocated, never written), and hold the boundary source."""
        shared = entry.pages[: self.prefix_cache.shared_pages]
        self.allocator.release(seq.page_ids[:own_prefix_pages], "seq")
        self.allocator.share(shared, "seq")
        seq.page_ids = (*shared, *seq.page_ids[own_prefix_pages:])
        seq.cached_prefix = True
        if len(entry.pages) > len(shared):  # the prefix ends inside a page: copy that page
            seq.boundary_src = entry.pages[-1]
            self.allocator.share((seq.boundary_src,), "seq")

    def _write_page_row(self, seq: Sequence) -> None:
        row = self.page_rows[seq.seq_row]
        row[:] = 0
        row[: len(seq.page_ids)] = seq.page_ids

    def finish(self, seq: Sequence, reason: str, *, referenced: bool) -> None:
        """Any live state -> FINISHED (its final output is being emitted). Released now
        unless a launched step still references it (``referenced``): then a zombie until
        ``release_unreferenced`` sees it."""
        assert not seq.finished, f"sequence {seq.seq_id} finished twice"
        state, seq.state, seq.finish_reason = seq.state, SeqState.FINISHED, reason
        if state is SeqState.WAITING:
            self._waiting.remove(seq)
        elif state is SeqState.ADMITTED:
            self._admitted.remove(seq)
        else:
            del self._running[seq]
        if referenced:
            self._zombies.add(seq)
        else:
            self._release(seq)

    def release_unreferenced(self, seqs: Iterable[Sequence]) -> None:
        """After a commit: of the rows no launched step references any more, release the
        finished ones (S3)."""
        for s in seqs:
            if s in self._zombies:
                self._zombies.discard(s)
                self._release(s)

    def _release(self, seq: Sequence) -> None:
        assert seq.state is SeqState.FINISHED, f"S3: release of a {seq.state.value} sequence"
        if seq.seq_row >= 0:
            self.allocator.release(seq.held_pages, "seq")
            self.page_rows[seq.seq_row] = 0
            self._free_rows.append(seq.seq_row)
        seq.state = SeqState.RELEASED
        del self._live[seq.request_id]

    # ------------------------------------------------------------- invariants
    def check(self) -> None:
        """Assert S1-S4 (tests; O(sequences + pages))."""
        places = {SeqState.WAITING: self._waiting, SeqState.ADMITTED: self._admitted,
                  SeqState.RUNNING: self._running, SeqState.FINISHED: self._zombies}
        assert sum(len(p) for p in places.values()) == len(self._live), "S1: a sequence in two places"
        holding: dict[int, Sequence] = {}
        for s in self._live.values():
            assert s in places[s.state], f"S1: {s.seq_id} is {s.state.value} but not in its place"
            if s.state is SeqState.WAITING:
                assert s.seq_row < 0 and not s.page_ids, f"S2: waiting {s.seq_id} holds resources"
                continue
            assert s.seq_row not in holding, f"S2: seq row {s.seq_row} shared"
            holding[s.seq_row] = s
            row = self.page_rows[s.seq_row]
            n = len(s.page_ids)
            assert row[:n].tolist() == list(s.page_ids) and not row[n:].any(), f"S2: page row of {s.seq_id}"
            assert bool(s.boundary_src) <= s.cached_prefix, f"S2: {s.seq_id} holds a copy source it has no use for"
        for r in range(len(self.page_rows)):
            if r not in holding:
                assert not self.page_rows[r].any(), f"S2: free row {r} lists pages"
        assert len(self._free_rows) + len(holding) == len(self.page_rows) - 1, "S2: seq rows lost"
        self.allocator.check()
        holders: tuple[tuple[Holder, list[tuple[int, ...]]], ...] = (
            ("seq", [s.held_pages for s in holding.values()]),
            ("cache", [e.pages for e in self.prefix_cache.entries()]))
        for kind, lists in holders:
            counts: dict[int, int] = {}
            for pages in lists:
                for p in pages:
                    counts[p] = counts.get(p, 0) + 1
            for p in range(1, self.allocator.num_pages):
                assert self.allocator.refs(p, kind) == counts.get(p, 0), f"S4: page {p} {kind} refs"
