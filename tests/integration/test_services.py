"""Key, crypto and access-key services over a real SoftHSM token and SQLite store."""

from __future__ import annotations

import sqlite3
import stat
import uuid

import pytest
from pkcs11 import KeyType

from hsmkms.app import build_runtime
from hsmkms.errors import AliasNotFound, InvalidAccessKeyIdNotFound, InvalidCiphertext, KeyNotFound
from hsmkms.hsm.backend import DecryptionFailed, HsmKeyMissing
from hsmkms.hsm.pkcs11 import master_key_template
from hsmkms.policy import PolicyError
from hsmkms.service import watch as watch_module
from hsmkms.service.access_keys import SERVICE_KEY_ID
from hsmkms.service.keys import hsm_label
from hsmkms.store.base import StoreError
from hsmkms.store.sqlite import SqliteStore
from tests.conftest import token_session

CREATE = dict(key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="Aliyun_KMS",
              protection_level="HSM", description="")


def test_create_key_puts_the_version_in_the_hsm(runtime, hsm):
    key = runtime.services.keys.create_key(**CREATE)
    labels = hsm.list_key_ids()
    assert labels[key.primary_version_id] == hsm_label(key.key_id, key.primary_version_id)
    assert runtime.store.get_version(key.primary_version_id).key_id == key.key_id


def test_failed_metadata_write_leaves_no_hsm_object(runtime, hsm, monkeypatch):
    before = set(hsm.list_key_ids())

    def broken(*args):
        raise StoreError("disk full")

    monkeypatch.setattr(runtime.store, "create_key", broken)
    with pytest.raises(StoreError):
        runtime.services.keys.create_key(**CREATE)
    assert set(hsm.list_key_ids()) == before


def test_resolve_by_every_form(runtime):
    keys = runtime.services.keys
    key = keys.create_key(**CREATE)
    keys.create_alias("alias/app", key)
    arn = runtime.services.identity.key_arn(key.key_id)
    for ref in [key.key_id, "alias/app", arn, runtime.services.identity.alias_arn("alias/app")]:
        assert keys.resolve(ref).key_id == key.key_id
    with pytest.raises(KeyNotFound):
        keys.resolve(str(uuid.uuid4()))
    with pytest.raises(AliasNotFound):
        keys.resolve("alias/other")


def test_ciphertexts_survive_a_restart(runtime, hsm):
    crypto = runtime.services.crypto
    key = runtime.services.keys.create_key(**CREATE)
    data_key = crypto.generate_data_key(key, 32, {"a": "b"})
    sealed = crypto.encrypt(key, "hello", {})
    runtime.store.close()
    restarted = build_runtime(runtime.settings, hsm=hsm)  # a new process would start like this
    assert restarted.services.crypto.open_blob(data_key.sealed.ciphertext_blob, {"a": "b"}).plaintext == \
        data_key.plaintext_b64
    assert restarted.services.crypto.open_blob(sealed.ciphertext_blob, {}).plaintext == "hello"
    with pytest.raises(InvalidCiphertext):
        restarted.services.crypto.open_blob(sealed.ciphertext_blob, {"x": "y"})
    restarted.store.close()


def test_changes_from_another_process_drop_the_caches(runtime):
    keys = runtime.services.keys
    key = keys.create_key(**CREATE)
    keys.create_alias("alias/moving", key)
    runtime.watch.refresh()
    assert keys.resolve("alias/moving").key_id == key.key_id  # now cached
    other = SqliteStore(runtime.store.path)  # the CLI, or another worker
    assert other.delete_alias("alias/moving", key.key_id)
    other.close()
    runtime.watch.refresh()
    with pytest.raises(AliasNotFound):
        keys.resolve("alias/moving")


def test_every_committed_write_bumps_the_private_change_counter(runtime):
    store = runtime.store
    before = store.change_counter()
    key = runtime.services.keys.create_key(**CREATE)
    runtime.services.keys.create_alias("alias/counted", key)
    after_create = store.change_counter()
    assert after_create != before
    other = SqliteStore(store.path)  # another process's store object bumps the same counter
    assert other.delete_alias("alias/counted", key.key_id)
    other.close()
    assert store.change_counter() != after_create
    assert stat.S_IMODE(store.changes_path.stat().st_mode) == 0o600


def test_a_write_that_bypasses_the_counter_is_noticed_through_data_version(runtime, monkeypatch):
    monkeypatch.setattr(watch_module, "DATA_VERSION_INTERVAL_S", 0.0)  # the backstop at every refresh
    keys = runtime.services.keys
    key = keys.create_key(**CREATE)
    keys.create_alias("alias/sideways", key)
    runtime.watch.refresh()
    assert keys.resolve("alias/sideways").key_id == key.key_id  # cached
    with sqlite3.connect(runtime.store.path) as raw:  # an operator's sqlite3 shell: no counter bump
        raw.execute("DELETE FROM aliases WHERE alias_name = 'alias/sideways'")
    raw.close()
    assert keys.resolve("alias/sideways").key_id == key.key_id  # no refresh yet: still the cached entry
    runtime.watch.refresh()
    with pytest.raises(AliasNotFound):
        keys.resolve("alias/sideways")


def test_access_key_secret_is_sealed_at_rest(runtime):
    access_keys = runtime.services.access_keys
    access_key_id, secret = access_keys.create("test")
    assert access_keys.credential(access_key_id).secret == secret
    assert secret not in repr(access_keys.credential(access_key_id))
    runtime.store.close()
    for path in runtime.settings.data_dir.iterdir():
        assert secret.encode() not in path.read_bytes(), path
    with pytest.raises(InvalidAccessKeyIdNotFound):
        access_keys.credential("LTAIunknown")


def test_sealed_secret_is_bound_to_its_id(runtime):
    access_keys = runtime.services.access_keys
    first, _ = access_keys.create()
    second, _ = access_keys.create()
    record = runtime.store.get_access_key(first)
    conn = runtime.store._conn
    conn.execute("UPDATE access_keys SET secret_iv = ?, secret_sealed = ? WHERE access_key_id = ?",
                 (record.secret_iv, record.secret_sealed, second))
    runtime.watch.invalidate()
    with pytest.raises(DecryptionFailed):
        access_keys.credential(second)



def test_a_warm_worker_reads_no_key_from_the_store(runtime, hsm):
    keys = [runtime.services.keys.create_key(**CREATE) for _ in range(3)]
    blob = runtime.services.crypto.encrypt(keys[0], "warm", {}).ciphertext_blob
    worker = build_runtime(runtime.settings, hsm=hsm)  # a new process
    worker.watch.refresh()
    assert worker.services.keys.warm() >= 3

    def no_reads(*args):
        raise AssertionError("the store was read on the request path")

    for name in ("get_key", "get_version", "get_alias"):
        setattr(worker.store, name, no_reads)
    for key in keys:
        assert worker.services.keys.resolve(key.key_id) == key
    assert worker.services.crypto.open_blob(blob, {}).plaintext == "warm"
    worker.store.close()


def test_a_policy_stored_before_names_were_checked_still_loads_and_doctor_reports_it(runtime):
    access_keys = runtime.services.access_keys
    access_key_id, _ = access_keys.create("stored by an earlier version")
    old = ('{"Version": "1", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"},'
           ' {"Effect": "Deny", "Action": "kms:Decrpyt", "Resource": "*"}]}')
    with pytest.raises(PolicyError):
        access_keys.set_policy(access_key_id, old)  # refused when stored now
    assert runtime.store.set_access_key_policy(access_key_id, old)  # as an earlier version stored it
    runtime.watch.invalidate()
    policy = access_keys.credential(access_key_id).policy
    # It means what it meant then: the misspelt Deny matches nothing, and the access key keeps working.
    assert policy.evaluate("Decrypt", ["acs:kms:cn-hangzhou:1:key/k"]).allowed
    report = runtime.services.maintenance.doctor()
    assert not report.consistent
    assert [line for line in report.lines() if access_key_id in line and "kms:Decrpyt" in line]
def test_service_key_is_restricted_to_gcm(runtime, hsm):
    assert hsm.allowed_mechanisms(SERVICE_KEY_ID) == (("AES_GCM",) if hsm.profile.allowed_mechanisms else None)


def test_doctor_notes_key_objects_usable_with_any_mechanism(runtime, hsm, hsm_settings):
    """Objects made before hsmkms set CKA_ALLOWED_MECHANISMS are reported (advice: doctor still passes); on a
    token without the attribute, doctor says that once."""
    if not hsm.profile.allowed_mechanisms:
        report = runtime.services.maintenance.doctor()
        assert report.unrestricted_objects is None
        assert any("does not support CKA_ALLOWED_MECHANISMS" in line for line in report.lines())
        return
    restricted = runtime.services.keys.create_key(**CREATE)
    legacy = runtime.services.keys.create_key(**CREATE)
    # Replace the legacy key's object by one made as hsmkms made them before: no CKA_ALLOWED_MECHANISMS.
    version_id = legacy.primary_version_id
    hsm.destroy_key(version_id)
    with token_session(hsm_settings) as session:
        template = master_key_template(hsm.namespace.cka_id(version_id),
                                       hsm.namespace.cka_label(hsm_label(legacy.key_id, version_id)),
                                       restrict_mechanisms=False)
        session.generate_key(KeyType.AES, 256, store=True, template=template)
    pair = runtime.services.keys.create_key(**{**CREATE, "key_spec": "EC_P256", "key_usage": "SIGN/VERIFY"})
    report = runtime.services.maintenance.doctor()
    assert version_id in report.unrestricted_objects
    assert restricted.primary_version_id not in report.unrestricted_objects
    assert pair.primary_version_id not in report.unrestricted_objects  # restricted to CKM_ECDSA
    assert SERVICE_KEY_ID not in report.unrestricted_objects
    assert any(version_id in line and "CKA_ALLOWED_MECHANISMS" in line for line in report.lines())
    assert version_id not in report.missing_objects


def test_key_pairs_and_hmac_keys_are_tracked_like_master_keys(runtime, hsm):
    """Doctor sees their versions' objects, and a purge destroys every version (both halves of each pair)."""
    keys = runtime.services.keys
    pair = keys.create_key(**{**CREATE, "key_spec": "RSA_2048", "key_usage": "SIGN/VERIFY"})
    second = keys.create_version(pair).version_id
    mac = keys.create_key(**{**CREATE, "key_spec": "HMAC_SHA_256", "key_usage": "GENERATE/VERIFY_MAC"})
    objects = [pair.primary_version_id, second, mac.primary_version_id]
    assert set(objects) <= set(hsm.list_key_ids())
    report = runtime.services.maintenance.doctor()
    assert not set(objects) & set(report.missing_objects + report.orphan_objects)
    for key in (keys.resolve(pair.key_id), mac):
        keys.schedule_deletion(key, 7)
    runtime.store.update_key(pair.key_id, {"delete_at": 0}, expected_state="PendingDeletion")
    runtime.store.update_key(mac.key_id, {"delete_at": 0}, expected_state="PendingDeletion")
    keys.watch.invalidate()
    assert set(runtime.services.maintenance.purge_due()) == {pair.key_id, mac.key_id}
    assert not set(objects) & set(hsm.list_key_ids())
    with pytest.raises(HsmKeyMissing):
        hsm.public_key(second)
    after = runtime.services.maintenance.doctor()  # other tests' objects share the session's token: look at ours
    assert not set(objects) & set(after.missing_objects + after.orphan_objects + after.dead_objects)
