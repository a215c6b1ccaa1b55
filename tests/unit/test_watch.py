"""StoreWatch: caches dropped when the store changed, and when it cannot say whether it did."""

from __future__ import annotations

import pytest

from hsmkms.service import watch as watch_module
from hsmkms.service.watch import Cache, StoreWatch
from hsmkms.store.base import StoreError


class FakeStore:
    def __init__(self):
        self.counter = b"0"
        self.version = 0
        self.down = False
        self.version_reads = 0

    def change_counter(self) -> bytes:
        return self.counter

    def data_version(self) -> int:
        self.version_reads += 1
        if self.down:
            raise StoreError("unreachable")
        return self.version


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(watch_module.time, "monotonic", lambda: now[0])
    return now


def test_a_failed_freshness_check_drops_the_caches_and_is_asked_again(clock):
    store = FakeStore()
    watch = StoreWatch(store)
    cache: Cache[str, str] = Cache(watch)
    watch.refresh()
    assert cache.get("k", lambda: "cached") == "cached"
    clock[0] += watch_module.DATA_VERSION_INTERVAL_S
    store.down = True
    with pytest.raises(StoreError):
        watch.refresh()
    assert cache.get("k", lambda: None) is None  # nothing may be served from a cache that is not confirmed
    reads = store.version_reads
    with pytest.raises(StoreError):
        watch.refresh()  # at the very next request, not a second later
    assert store.version_reads == reads + 1
    store.down = False
    watch.refresh()
    assert cache.get("k", lambda: "fresh") == "fresh"
    reads = store.version_reads
    watch.refresh()
    assert store.version_reads == reads  # confirmed: asked again only after the interval


def test_a_change_seen_by_either_check_drops_the_caches(clock):
    store = FakeStore()
    watch = StoreWatch(store)
    cache: Cache[str, str] = Cache(watch)
    watch.refresh()
    cache.get("k", lambda: "v1")
    store.counter = b"1"
    watch.refresh()
    assert cache.get("k", lambda: "v2") == "v2"
    store.version = 7
    watch.refresh()
    assert cache.get("k", lambda: "v3") == "v2"  # the version is asked at most once an interval
    clock[0] += watch_module.DATA_VERSION_INTERVAL_S
    watch.refresh()
    assert cache.get("k", lambda: "v4") == "v4"
