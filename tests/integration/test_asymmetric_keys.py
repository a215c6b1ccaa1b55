"""Key pairs and HMAC keys on every test token: what the token holds (sensitive, non-extractable, usable only
for the key's usage), what it refuses, and that a key pair goes away whole."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from pkcs11 import Attribute, ObjectClass

from hsmkms.hsm.backend import HsmConfigurationError, HsmKeyMissing, HsmUnsupported
from tests.conftest import token_session

# key spec, usage, CKA_ALLOWED_MECHANISMS where the token has the attribute (softhsm: with CKM_RSA_X_509 for
# the host-side OAEP decoding), bits
KINDS = [
    ("RSA_2048", "SIGN/VERIFY", ("RSA_PKCS", "RSA_PKCS_PSS"), 2048),
    ("RSA_3072", "ENCRYPT/DECRYPT", ("RSA_PKCS_OAEP",), 3072),
    ("EC_P256", "SIGN/VERIFY", ("ECDSA",), 256),
    ("EC_P256K", "SIGN/VERIFY", ("ECDSA",), 256),
]


def new_id() -> str:
    return str(uuid.uuid4())


def supports(hsm, key_spec: str) -> bool:
    """NSS softoken has no secp256k1 (measured: CKR_DOMAIN_PARAMS_INVALID); every other pair is on both."""
    return not (key_spec == "EC_P256K" and hsm.profile.name == "nss")


@pytest.mark.parametrize(("key_spec", "usage", "allowed", "bits"), KINDS)
def test_a_key_pair_is_sensitive_and_limited_to_its_usage(hsm, key_spec, usage, allowed, bits):
    object_id = new_id()
    if not supports(hsm, key_spec):
        with pytest.raises(HsmUnsupported, match=key_spec):
            hsm.create_key_pair(object_id, f"hsmkms:cmk:test:{object_id}", key_spec, usage)
        assert object_id not in hsm.list_key_ids()
        return
    hsm.create_key_pair(object_id, f"hsmkms:cmk:test:{object_id}", key_spec, usage)
    try:
        info = hsm.key_info(object_id)
        assert (info.token, info.private, info.sensitive, info.extractable, info.modifiable) == (
            True, True, True, False, False)
        assert info.always_sensitive and info.never_extractable
        assert (info.sign, info.decrypt) == (usage == "SIGN/VERIFY", usage == "ENCRYPT/DECRYPT")
        assert not (info.unwrap or info.derive)
        assert info.key_bits == bits
        if hsm.profile.allowed_mechanisms:
            expected = set(allowed) | ({"RSA_X_509"} if usage == "ENCRYPT/DECRYPT" and
                                       hsm.profile.oaep_unpad_on_host else set())
            assert set(info.allowed_mechanisms) == expected
        else:
            assert info.allowed_mechanisms is None
        assert len(hsm.public_key(object_id)) > 64
    finally:
        hsm.destroy_key(object_id)


def test_a_signing_key_cannot_decrypt_and_a_decryption_key_cannot_sign(hsm):
    signer, decrypter = new_id(), new_id()
    hsm.create_key_pair(signer, f"hsmkms:cmk:test:{signer}", "RSA_2048", "SIGN/VERIFY")
    hsm.create_key_pair(decrypter, f"hsmkms:cmk:test:{decrypter}", "RSA_2048", "ENCRYPT/DECRYPT")
    try:
        digest = hashlib.sha256(b"m").digest()
        with pytest.raises(HsmConfigurationError):
            hsm.sign_digest(decrypter, "RSA_PKCS1_SHA_256", digest)
        with pytest.raises(HsmConfigurationError):
            hsm.rsa_oaep_decrypt(signer, "SHA256", bytes(256))
        assert len(hsm.sign_digest(signer, "RSA_PKCS1_SHA_256", digest)) == 256
    finally:
        hsm.destroy_key(signer)
        hsm.destroy_key(decrypter)


def test_an_hmac_key_is_sensitive_and_only_computes_its_mac(hsm):
    object_id = new_id()
    hsm.create_hmac_key(object_id, f"hsmkms:cmk:test:{object_id}", "HMAC_SHA_256")
    try:
        info = hsm.key_info(object_id)
        assert (info.token, info.sensitive, info.extractable, info.modifiable) == (True, True, False, False)
        assert (info.sign, info.verify, info.encrypt, info.decrypt, info.wrap, info.derive) == (
            True, True, False, False, False, False)
        assert info.key_bits == 256
        expected = ("SHA256_HMAC",) if hsm.profile.allowed_mechanisms else None
        assert info.allowed_mechanisms == expected
        mac = hsm.hmac(object_id, "HMAC_SHA_256", b"message")
        assert len(mac) == 32 and mac == hsm.hmac(object_id, "HMAC_SHA_256", b"message")
        if hsm.profile.allowed_mechanisms:
            with pytest.raises(HsmConfigurationError):
                hsm.hmac(object_id, "HMAC_SHA_224", b"message")
    finally:
        hsm.destroy_key(object_id)


def test_destroying_a_key_pair_removes_both_halves(hsm, hsm_settings):
    object_id = new_id()
    hsm.create_key_pair(object_id, f"hsmkms:cmk:test:{object_id}", "EC_P256", "SIGN/VERIFY")
    assert hsm.list_key_ids()[object_id] == f"hsmkms:cmk:test:{object_id}"
    hsm.destroy_key(object_id)
    assert object_id not in hsm.list_key_ids()
    with pytest.raises(HsmKeyMissing):
        hsm.public_key(object_id)
    with token_session(hsm_settings) as session:
        left = [obj for cls in (ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY)
                for obj in session.get_objects({Attribute.CLASS: cls, Attribute.ID: hsm.namespace.cka_id(object_id)})]
    assert left == []
