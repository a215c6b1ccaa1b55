"""Process-local caches of metadata, dropped whenever the metadata store changed.

The hot path must not read the database on every request, yet a key disabled through another worker
process or the CLI must be refused at once.  ``refresh()`` runs once per request and clears every
registered cache when the store's change counter moved (a memory read; every write through the store
bumps it), and, as a backstop for writes that bypass the counter, when ``data_version`` moved (a read
transaction or a round trip to the database, so asked at most every DATA_VERSION_INTERVAL_S: this bounds how
stale a cache can be, 1 s, even if a change notification is lost).  When that check fails, the caches are
dropped and it is asked again at the next request.  An entry read before a clear is not stored after it
(``generation``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from hsmkms.store.base import Store, StoreError

DATA_VERSION_INTERVAL_S = 1.0

K = TypeVar("K")
V = TypeVar("V")


class Cache(Generic[K, V]):
    def __init__(self, watch: StoreWatch):
        self._entries: dict[K, V] = {}
        self._watch = watch
        watch.register(self)

    def get(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The cached value, or ``load()``'s (cached unless None, or unless the caches were cleared meanwhile)."""
        value = self._entries.get(key)
        if value is None:
            generation = self._watch.generation
            value = load()
            if value is not None and generation == self._watch.generation:
                self._entries[key] = value
        return value

    def fill(self, entries: dict[K, V], generation: int) -> None:
        """Load many entries at once (a worker warming up), unless the caches were cleared meanwhile."""
        if generation == self._watch.generation:
            self._entries.update(entries)

    def clear(self) -> None:
        self._entries.clear()


class StoreWatch:
    def __init__(self, store: Store):
        self._store = store
        self._seen_counter: bytes | None = None
        self._seen_version: int | None = None
        self._next_version_check = 0.0
        self._caches: list[Cache] = []
        self._lock = threading.Lock()
        self.generation = 0

    def register(self, cache: Cache) -> None:
        self._caches.append(cache)

    def refresh(self) -> None:
        counter = self._store.change_counter()
        if counter != self._seen_counter:
            self.invalidate()
            self._seen_counter = counter
        now = time.monotonic()
        if now >= self._next_version_check:
            try:
                version = self._store.data_version()
            except StoreError:
                # Freshness cannot be confirmed (the database is unreachable): drop the caches, so that requests
                # read the store (and answer 503 while it is down) rather than serve what may be stale.
                self.invalidate()
                raise
            self._next_version_check = now + DATA_VERSION_INTERVAL_S
            if version != self._seen_version:
                self.invalidate()
                self._seen_version = version

    def invalidate(self) -> None:
        """Drop every cached entry (also called after this process changed metadata itself)."""
        with self._lock:
            self.generation += 1
            for cache in self._caches:
                cache.clear()
