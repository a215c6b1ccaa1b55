"""Two nodes on one PostgreSQL database: what node A changes, node B enforces within 1 s.

Each node is a runtime of its own (its own store object, listener, caches and watch), as two server
processes on two machines would have; they share the session's SoftHSM token.  A node's requests run
``watch.refresh()`` first, as the RPC endpoint does, so "enforced" means: the first request that starts
after the bound is refused.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from hsmkms.app import build_runtime
from hsmkms.errors import AliasNotFound, ForbiddenAccessKey, KeyStateRejected
from hsmkms.policy import parse_policy
from hsmkms.store.postgres import PostgresNonces, PostgresStore
from hsmkms.store.redis_nonces import RedisNonces

BOUND_S = 1.0
CREATE = dict(key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="Aliyun_KMS",
              protection_level="HSM", description="")


@pytest.fixture
def nodes(hsm_settings, hsm, postgres_url, tmp_path):
    settings = dataclasses.replace(hsm_settings, data_dir=tmp_path, softhsm_token_dir=None, store_url=postgres_url)
    started = []
    for _ in range(2):
        runtime = build_runtime(settings, hsm=hsm)
        runtime.store.migrate()
        runtime.nonces.prepare(time.time())
        runtime.services.access_keys.ensure_service_key()
        runtime.watch.refresh()  # starts listening
        started.append(runtime)
    time.sleep(0.3)  # both listening
    yield started
    for runtime in started:
        runtime.store.close()
        runtime.nonces.close()


def enforced_within(node, request, refused: type[Exception]) -> float:
    """Seconds until ``request()`` on ``node`` raises ``refused`` (fails past BOUND_S)."""
    started = time.monotonic()
    while True:
        node.watch.refresh()
        try:
            request()
        except refused:
            return time.monotonic() - started
        assert time.monotonic() - started <= BOUND_S, "the change was not enforced within the bound"
        time.sleep(0.01)


def test_the_runtime_uses_postgres_for_metadata_and_nonces(nodes, redis_server):
    a, _ = nodes
    assert isinstance(a.store, PostgresStore) and isinstance(a.nonces, PostgresNonces)
    with_redis = build_runtime(dataclasses.replace(a.settings, nonce_url=redis_server), hsm=a.hsm)
    assert isinstance(with_redis.nonces, RedisNonces)
    with_redis.store.close()


def test_a_nonce_used_on_one_node_is_refused_on_the_other(nodes):
    a, b = nodes
    now = time.time()
    assert a.nonces.claim("LTAIx", "once", now, now + 900)
    assert not b.nonces.claim("LTAIx", "once", now, now + 900)


def test_an_access_key_disabled_on_one_node_is_refused_by_the_other(nodes):
    a, b = nodes
    access_key_id, _ = a.services.access_keys.create("app")
    b.watch.refresh()
    assert b.services.access_keys.credential(access_key_id).enabled  # cached on B
    a.services.access_keys.set_enabled(access_key_id, False)
    enforced_within(b, lambda: b.services.access_keys.credential(access_key_id), ForbiddenAccessKey)


def test_a_policy_changed_on_one_node_is_enforced_by_the_other(nodes):
    a, b = nodes
    access_key_id, _ = a.services.access_keys.create("app")
    b.watch.refresh()
    assert b.services.access_keys.credential(access_key_id).policy.to_json() == a.services.access_keys \
        .policy_of(access_key_id).to_json()
    narrowed = '{"Version":"1","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}]}'
    a.services.access_keys.set_policy(access_key_id, narrowed)

    class Stale(Exception):
        pass

    def new_policy_seen():
        if b.services.access_keys.credential(access_key_id).policy.to_json() == parse_policy(narrowed).to_json():
            raise Stale()

    enforced_within(b, new_policy_seen, Stale)


def test_a_key_disabled_on_one_node_is_refused_by_the_other(nodes):
    a, b = nodes
    key = a.services.keys.create_key(**CREATE)
    a.services.keys.create_alias("alias/moving", key)
    b.watch.refresh()

    def encrypt_on_b():
        return b.services.crypto.encrypt(b.services.keys.resolve("alias/moving"), "hello", {})

    sealed = encrypt_on_b()  # key and alias now cached on B
    a.services.keys.disable(key)
    enforced_within(b, encrypt_on_b, KeyStateRejected)
    enabled = a.services.keys.enable(a.services.keys.resolve(key.key_id))
    a.services.keys.delete_alias("alias/moving", enabled)
    enforced_within(b, lambda: b.services.keys.resolve("alias/moving"), AliasNotFound)
    assert b.services.crypto.open_blob(sealed.ciphertext_blob, {}).plaintext == "hello"


def test_the_bound_holds_when_a_notification_is_lost(nodes, monkeypatch):
    """The change counter, read at most once a second, catches what the listener did not hear."""
    a, b = nodes
    access_key_id, _ = a.services.access_keys.create("app")

    class Deaf:
        listening, count = True, 0

        def stop(self):
            pass

    b.watch.refresh()
    b.services.access_keys.credential(access_key_id)
    monkeypatch.setattr(b.store, "_listener", Deaf())
    a.services.access_keys.set_enabled(access_key_id, False)
    enforced_within(b, lambda: b.services.access_keys.credential(access_key_id), ForbiddenAccessKey)
