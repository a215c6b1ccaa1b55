"""Key-material import in the token (both test tokens): the wrapping key pair, C_UnwrapKey into a master key,
and what each token refuses."""

from __future__ import annotations

import os
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmkms.hsm.backend import IMPORT_WRAPPING_ALGORITHMS, UnwrapFailed

PADDINGS = {
    "RSAES_OAEP_SHA_256": lambda: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
    "RSAES_OAEP_SHA_1": lambda: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),
    "RSAES_PKCS1_V1_5": padding.PKCS1v15,
}
# What each test token unwraps (measured: SoftHSM 2.6.1 refuses OAEP with SHA-256 in C_UnwrapKey).
EXPECTED = {
    "softhsm": ("RSAES_OAEP_SHA_1", "RSAES_PKCS1_V1_5"),
    "nss": IMPORT_WRAPPING_ALGORITHMS,
}


def wrapping_pair(hsm):
    wrapping_id = str(uuid.uuid4())
    der = hsm.create_wrapping_key_pair(wrapping_id, f"hsmkms:import:test:{wrapping_id}")
    return wrapping_id, serialization.load_der_public_key(der)


def test_the_token_says_which_algorithms_it_unwraps_with(hsm, token_name):
    if token_name in EXPECTED:
        assert hsm.unwrap_algorithms() == EXPECTED[token_name]
    assert "RSAES_OAEP_SHA_1" in hsm.unwrap_algorithms()


def test_wrapping_private_key_attributes(hsm):
    wrapping_id, public_key = wrapping_pair(hsm)
    assert public_key.key_size == 2048
    info = hsm.wrapping_key_info(wrapping_id)
    assert (info.token, info.private, info.sensitive, info.extractable) == (True, True, True, False)
    assert info.unwrap and not any([info.decrypt, info.sign, info.derive])
    assert info.key_bits == 2048
    assert info.allowed_mechanisms == (("RSA_PKCS", "RSA_PKCS_OAEP") if hsm.profile.allowed_mechanisms else None)
    assert wrapping_id in hsm.list_wrapping_key_ids()
    hsm.destroy_wrapping_key(wrapping_id)
    assert wrapping_id not in hsm.list_wrapping_key_ids()
    hsm.destroy_wrapping_key(wrapping_id)  # gone already: nothing


def test_unwrapped_material_is_a_master_key(hsm):
    wrapping_id, public_key = wrapping_pair(hsm)
    material = os.urandom(32)
    for algorithm in hsm.unwrap_algorithms():
        object_id = str(uuid.uuid4())
        hsm.unwrap_aes_key(wrapping_id, algorithm, public_key.encrypt(material, PADDINGS[algorithm]()), object_id,
                           f"hsmkms:cmk:test:{object_id}")
        info = hsm.key_info(object_id)
        assert (info.token, info.private, info.sensitive, info.extractable) == (True, True, True, False)
        assert (info.encrypt, info.decrypt) == (True, True)
        assert not any([info.wrap, info.unwrap, info.sign, info.verify, info.derive])
        assert info.allowed_mechanisms == (("AES_GCM",) if hsm.profile.allowed_mechanisms else None)
        # The same material under another algorithm is the same key: GCM under it interoperates on the host.
        iv = os.urandom(12)
        assert AESGCM(material).decrypt(iv, hsm.gcm_encrypt(object_id, iv, b"data", b"aad"), b"aad") == b"data"
        hsm.destroy_key(object_id)


def test_material_that_does_not_open_is_refused(hsm):
    wrapping_id, public_key = wrapping_pair(hsm)
    algorithm = "RSAES_OAEP_SHA_1"
    object_id = str(uuid.uuid4())
    for _ in range(8):  # random bytes fail in several ways (padding, an integer above the modulus ...)
        with pytest.raises(UnwrapFailed):
            hsm.unwrap_aes_key(wrapping_id, algorithm, os.urandom(256), object_id, f"hsmkms:cmk:test:{object_id}")
    other_id, other_public = wrapping_pair(hsm)
    with pytest.raises(UnwrapFailed):  # wrapped for another wrapping key
        hsm.unwrap_aes_key(wrapping_id, algorithm, other_public.encrypt(os.urandom(32), PADDINGS[algorithm]()),
                           object_id, f"hsmkms:cmk:test:{object_id}")
    assert not hsm.has_key(object_id)
    assert len(hsm.random(8)) == 8  # the session still serves
