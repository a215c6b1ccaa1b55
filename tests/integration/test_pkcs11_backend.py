"""The PKCS#11 backend on a real SoftHSM token created in a temporary directory."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import pkcs11
import pytest
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams
from prometheus_client import generate_latest

from hsmkms.hsm.backend import DecryptionFailed, HsmKeyMissing
from hsmkms.hsm.pkcs11 import Pkcs11Backend
from hsmkms.hsm.pkcs11.backend import RANDOM_POOL_BYTES
from hsmkms.metrics import MeteredHsm, Metrics
from tests import tokens
from tests.conftest import token_session


def new_key(hsm) -> str:
    object_id = str(uuid.uuid4())
    hsm.create_aes_key(object_id, f"hsmkms:cmk:test:{object_id}")
    return object_id


def test_master_key_attributes_on_the_token(hsm):
    object_id = new_key(hsm)
    info = hsm.key_info(object_id)
    assert info.label == hsm.namespace.cka_label(f"hsmkms:cmk:test:{object_id}")  # as on the token
    assert info.key_bits == 256
    assert (info.token, info.private, info.sensitive, info.extractable) == (True, True, True, False)
    assert (info.always_sensitive, info.never_extractable) == (True, True)
    assert (info.encrypt, info.decrypt) == (True, True)
    assert not any([info.wrap, info.unwrap, info.sign, info.verify, info.derive])
    # NSS softoken has no CKA_ALLOWED_MECHANISMS: the key says so (None), and doctor notes it.
    assert info.allowed_mechanisms == (("AES_GCM",) if hsm.profile.allowed_mechanisms else None)


def test_a_master_key_refuses_every_mechanism_but_gcm(hsm, hsm_settings):
    """With the PIN, AES-ECB on a master key would give GCM's hash subkey: the token itself refuses it (where
    the token has CKA_ALLOWED_MECHANISMS; NSS softoken has not, which the test above and doctor show)."""
    object_id = new_key(hsm)
    if not hsm.profile.allowed_mechanisms:
        assert hsm.allowed_mechanisms(object_id) is None
        return
    with token_session(hsm_settings) as session:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, id=hsm.namespace.cka_id(object_id))
        for mechanism, param in [(Mechanism.AES_ECB, None), (Mechanism.AES_CBC_PAD, bytes(16))]:
            with pytest.raises(p11.MechanismInvalid):  # SoftHSM's answer; the standard allows KEY_FUNCTION_...
                key.encrypt(bytes(16), mechanism=mechanism, mechanism_param=param)
        # GCM still works on that key
        assert len(key.encrypt(b"x", mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(bytes(12), b"", 128))) == 17


def test_key_value_cannot_be_read(hsm, hsm_settings):
    """Independently of the backend: the token itself refuses to reveal the key value."""
    object_id = new_key(hsm)
    with token_session(hsm_settings) as session:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, id=hsm.namespace.cka_id(object_id))
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]


def test_gcm_round_trip_and_failures(hsm):
    object_id = new_key(hsm)
    iv = hsm.random(12)
    sealed = hsm.gcm_encrypt(object_id, iv, b"secret data", b'{"a":"1"}')
    assert len(sealed) == len(b"secret data") + 16
    assert hsm.gcm_decrypt(object_id, iv, sealed, b'{"a":"1"}') == b"secret data"
    with pytest.raises(DecryptionFailed):
        hsm.gcm_decrypt(object_id, iv, sealed, b'{"a":"2"}')
    tampered = bytes([sealed[0] ^ 1]) + sealed[1:]
    with pytest.raises(DecryptionFailed):
        hsm.gcm_decrypt(object_id, iv, tampered, b'{"a":"1"}')
    with pytest.raises(DecryptionFailed):
        hsm.gcm_decrypt(new_key(hsm), iv, sealed, b'{"a":"1"}')


def test_unknown_key_object(hsm):
    with pytest.raises(HsmKeyMissing):
        hsm.gcm_encrypt(str(uuid.uuid4()), bytes(12), b"x", b"")
    assert not hsm.has_key(str(uuid.uuid4()))


def test_random_comes_in_the_asked_length(hsm):
    values = {hsm.random(32) for _ in range(50)}
    assert len(values) == 50 and all(len(v) == 32 for v in values)
    assert len(hsm.random(1036)) == 1036


def test_small_draws_come_from_the_pool_and_only_its_refills_are_metered(hsm):
    metrics = Metrics(set())
    metered = MeteredHsm(hsm, metrics)
    assert hsm.pooled_random(RANDOM_POOL_BYTES // 8 + 1) is None  # too big for the pool: always the token
    for _ in range(RANDOM_POOL_BYTES // 32 + 1):  # empty what earlier tests left in the pool
        if hsm.pooled_random(32) is None:
            break
    assert hsm.pooled_random(32) is None
    draws = [metered.random(32) for _ in range(100)]  # the first refills the pool; the other 99 draw from it
    assert len(set(draws)) == 100 and all(len(draw) == 32 for draw in draws)
    assert len(hsm.pooled_random(32)) == 32
    metrics.flush()
    published = generate_latest(metrics.registry).decode()
    assert 'hsmkms_hsm_operation_duration_seconds_count{operation="random"} 1.0' in published


def test_list_and_destroy(hsm):
    object_id = new_key(hsm)
    assert hsm.list_key_ids()[object_id] == f"hsmkms:cmk:test:{object_id}"
    hsm.destroy_key(object_id)
    assert not hsm.has_key(object_id)
    assert object_id not in hsm.list_key_ids()
    hsm.destroy_key(object_id)  # idempotent


def test_concurrent_threads_are_serialised(hsm):
    """SoftHSM aborts when two threads call it at once; the backend's lock must prevent that."""
    object_id = new_key(hsm)
    errors: list[BaseException] = []
    checked = []

    def work(index: int) -> None:
        try:
            for round_number in range(200):
                iv = hsm.random(12)
                message = f"{index}-{round_number}".encode()
                aad = str(index).encode()
                sealed = hsm.gcm_encrypt(object_id, iv, message, aad)
                assert hsm.gcm_decrypt(object_id, iv, sealed, aad) == message
                checked.append(1)
        except BaseException as exc:  # collected and re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(checked) == 8 * 200


def _child_uses_backend(hsm: Pkcs11Backend, object_id: str, iv: bytes, sealed: bytes, queue) -> None:
    try:
        queue.put(hsm.gcm_decrypt(object_id, iv, sealed, b""))
    except BaseException as exc:
        queue.put(repr(exc))


def test_backend_reopens_after_fork(hsm):
    """A forked worker initialises the library and logs in itself, and finds keys made by its parent."""
    object_id = new_key(hsm)
    iv = hsm.random(12)
    sealed = hsm.gcm_encrypt(object_id, iv, b"from the parent", b"")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_uses_backend, args=(hsm, object_id, iv, sealed, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == b"from the parent"
    # The parent's session is untouched.
    assert hsm.gcm_decrypt(object_id, iv, sealed, b"") == b"from the parent"


def test_the_crypto_path_reads_no_attribute_of_a_key(hsm, hsm_settings):
    """Each attribute read costs SoftHSM tens of microseconds: GCM goes through hsmkms's own C_Encrypt and
    C_Decrypt on the cached handle, without python-pkcs11 reading the key's type first."""
    object_id = new_key(hsm)
    worker = tokens.backend(hsm_settings)
    worker.open()  # lists the token, as a worker starting does
    try:
        sealed = worker.gcm_encrypt(object_id, b"\0" * 12, b"data key", b"{}")
        assert worker.gcm_decrypt(object_id, b"\0" * 12, sealed, b"{}") == b"data key"
        assert "key_type" not in vars(worker._keys[object_id])  # python-pkcs11's cached_property, never read
    finally:
        worker.close()


def test_gcm_on_a_known_key_takes_the_direct_path(hsm, monkeypatch):
    """Once a key's handle is cached, GCM calls skip the general path (its closures and retries); a failed tag
    is still DecryptionFailed."""
    object_id = new_key(hsm)
    iv = hsm.random(12)
    sealed = hsm.gcm_encrypt(object_id, iv, b"first", b"{}")  # the general path: caches the handle

    def general_path(*args, **kwargs):
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(hsm, "_with_key", general_path)
    again = hsm.gcm_encrypt(object_id, iv, b"second", b"{}")
    assert hsm.gcm_decrypt(object_id, iv, sealed, b"{}") == b"first"
    assert hsm.gcm_decrypt(object_id, iv, again, b"{}") == b"second"
    with pytest.raises(DecryptionFailed):
        hsm.gcm_decrypt(object_id, iv, sealed, b'{"other":"context"}')


def test_a_key_made_again_under_its_id_here_is_used_by_its_new_handle(hsm, hsm_settings, monkeypatch):
    """Destroyed and made again by this backend (imported material is, under its version id): the plain handle
    the direct path keeps is the new key's, so calls neither reach the old object nor fall back."""
    object_id = new_key(hsm)
    iv = hsm.random(12)
    hsm.gcm_encrypt(object_id, iv, b"old key", b"")  # caches the old key's handle
    hsm.destroy_key(object_id)
    hsm.create_aes_key(object_id, f"hsmkms:cmk:test:{object_id}")

    def general_path(*args, **kwargs):
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(hsm, "_with_key", general_path)
    sealed = hsm.gcm_encrypt(object_id, iv, b"new key", b"")
    assert hsm._handles[object_id] == hsm._keys[object_id].handle
    other = tokens.backend(hsm_settings)
    other.open()
    try:
        assert other.gcm_decrypt(object_id, iv, sealed, b"") == b"new key"  # sealed under the object on the token
    finally:
        other.close()


def test_a_direct_call_that_fails_goes_through_the_general_path(hsm, hsm_settings, monkeypatch):
    """A key destroyed and made again under the same id by another backend: the cached handle is stale, the
    direct call fails, and the general path looks the key up again and makes the call."""
    object_id = new_key(hsm)
    iv = hsm.random(12)
    hsm.gcm_encrypt(object_id, iv, b"cached", b"")
    other = tokens.backend(hsm_settings)
    other.open()
    general_calls = []
    general_path = hsm._with_key

    def counted(*args, **kwargs):
        general_calls.append(args[0])
        return general_path(*args, **kwargs)

    monkeypatch.setattr(hsm, "_with_key", counted)
    try:
        other.destroy_key(object_id)
        other.create_aes_key(object_id, f"hsmkms:cmk:test:{object_id}")
        sealed = hsm.gcm_encrypt(object_id, iv, b"after", b"")
        assert general_calls == [object_id]
        assert other.gcm_decrypt(object_id, iv, sealed, b"") == b"after"
        assert hsm.gcm_decrypt(object_id, iv, other.gcm_encrypt(object_id, iv, b"back", b""), b"") == b"back"
    finally:
        other.close()
