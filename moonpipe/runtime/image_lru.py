"""Image embeddings cached by content: the key function and the bounded LRU map.

One class serves both places that track cached images: the compute side's cache of
embeddings (``DeviceWork``: key -> (729, D) tensor) and the runner's mirror of its keys
(key -> None), which the scheduler and ``Engine.submit`` read. Both see the same
image-encoding prefills (those without a cached prefix) in the same order with the same
capacity, so the mirror evicts exactly what the cache evicts, even when the cache lives
in a worker process.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["ImageLRU", "image_key"]

V = TypeVar("V")


def image_key(data: bytes) -> str:
    """Content hash of an encoded image file: identical bytes, one embedding."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class ImageLRU(Generic[V]):
    """A map of at most ``capacity`` entries that forgets the least recently used one.

    Safe to read from other threads while one thread writes (the runner's mirror is read
    by submitting threads).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ImageLRU capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def get(self, key: str) -> V | None:
        """The entry (now the most recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None or key in self._entries:
                self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: V) -> None:
        """Insert or refresh ``key`` as the most recently used; evict beyond capacity."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
