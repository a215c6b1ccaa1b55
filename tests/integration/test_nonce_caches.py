"""The replay (nonce) caches: the file table of one machine, and the shared ones of a cluster (a PostgreSQL
UNLOGGED table, Redis).  Each test runs against every implementation; a second object on the same data
stands for another worker or node."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis

from hsmkms.store.base import NonceCache, StoreError
from hsmkms.store.nonces import CLOCK_STEP_GRACE_S, NonceStore
from hsmkms.store.postgres import PostgresNonces
from hsmkms.store.redis_nonces import RedisNonces
from tests.services import free_port

NOW = 1_800_000_000.0
WINDOW = 900


@pytest.fixture(params=["file", "postgres", "redis"])
def open_cache(request, tmp_path) -> Callable[[], NonceCache]:
    if request.param == "file":
        def make() -> NonceCache:
            return NonceStore(tmp_path / "nonces.bin", 64)
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_schema_url")

        def make() -> NonceCache:
            return PostgresNonces(url)
    else:
        url = request.getfixturevalue("redis_server")
        prefix = f"hsmkms-test:{uuid.uuid4().hex}:".encode()

        def make() -> NonceCache:
            return RedisNonces(url, key_prefix=prefix)

        def remove_keys() -> None:
            client = redis.Redis.from_url(url)
            for key in client.scan_iter(match=prefix + b"*"):
                client.delete(key)
            client.close()

        request.addfinalizer(remove_keys)
    opened: list[NonceCache] = []

    def opener() -> NonceCache:
        cache = make()
        cache.prepare(NOW)
        opened.append(cache)
        return cache

    yield opener
    for cache in opened:
        cache.close()


def test_a_nonce_is_accepted_once_by_every_process(open_cache):
    first, second = open_cache(), open_cache()
    assert first.claim("LTAIa", "n-1", NOW, NOW + WINDOW)
    assert not first.claim("LTAIa", "n-1", NOW + 1, NOW + WINDOW)
    assert not second.claim("LTAIa", "n-1", NOW + 2, NOW + WINDOW)
    assert second.claim("LTAIb", "n-1", NOW, NOW + WINDOW)  # nonces are per access key
    assert second.claim("LTAIa", "n-2", NOW, NOW + WINDOW)
    # The key and the nonce are length-prefixed: no pair reads like another when joined.
    assert first.claim("LTAIa", "n-1x", NOW, NOW + WINDOW)
    assert first.claim("LTAIan", "-1x", NOW, NOW + WINDOW)


@pytest.mark.parametrize("open_cache", ["file", "postgres"], indirect=True)  # Redis: test_redis_expiry_is_the_window
def test_a_nonce_is_remembered_until_its_window_and_the_grace_have_passed(open_cache):
    cache = open_cache()
    assert cache.claim("LTAIa", "n", NOW, NOW + 10)
    assert not cache.claim("LTAIa", "n", NOW + 10 + CLOCK_STEP_GRACE_S - 1, NOW + 2000)
    assert cache.claim("LTAIa", "n", NOW + 10 + CLOCK_STEP_GRACE_S + 1, NOW + 2000)
    assert not cache.claim("LTAIa", "n", NOW + 20 + CLOCK_STEP_GRACE_S, NOW + 2000)


def test_an_unreachable_cache_refuses_to_answer(tmp_path):
    """A cache that cannot answer raises StoreError (503): it never lets a request through unchecked."""
    port = free_port()
    for cache in (PostgresNonces(f"postgresql://postgres@127.0.0.1:{port}/x", busy_timeout_ms=1000),
                  RedisNonces(f"redis://127.0.0.1:{port}/0"),
                  NonceStore(tmp_path / "missing" / "nonces.bin", 64)):
        with pytest.raises(StoreError):
            cache.claim("LTAIa", "n", NOW, NOW + WINDOW)
        assert not cache.ping()
        with pytest.raises(StoreError):
            cache.prepare(NOW)
        cache.close()


def test_postgres_prunes_expired_nonces_only(postgres_schema_url):
    cache = PostgresNonces(postgres_schema_url)
    cache.prepare(NOW)
    try:
        assert cache.claim("LTAIa", "old", NOW, NOW + 10)
        assert cache.claim("LTAIa", "new", NOW, NOW + 1000)
        assert cache.prune(NOW + 10 + CLOCK_STEP_GRACE_S + 1) == 1
        assert not cache.claim("LTAIa", "new", NOW + 20, NOW + 1000)
        assert cache.claim("LTAIa", "old", NOW + 20, NOW + 1000)
    finally:
        cache.close()


def test_redis_expiry_is_the_window(redis_server):
    cache = RedisNonces(redis_server, key_prefix=f"hsmkms-test:{uuid.uuid4().hex}:".encode())
    client = redis.Redis.from_url(redis_server)
    try:
        assert cache.claim("LTAIa", "n", NOW, NOW + 100)
        ttl = client.ttl(cache.key("LTAIa", "n"))
        assert 100 + CLOCK_STEP_GRACE_S - 2 <= ttl <= 100 + CLOCK_STEP_GRACE_S
    finally:
        client.delete(cache.key("LTAIa", "n"))
        client.close()
        cache.close()
