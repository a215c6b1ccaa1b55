"""The host-side OAEP decoding (hsmkms/hsm/oaep.py) against cryptography's OAEP, and one uniform error for
every malformed block."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hsmkms.hsm.oaep import OaepDecodingError, _mgf1, _xor, oaep_decode

HASHES = {"SHA1": hashes.SHA1(), "SHA256": hashes.SHA256()}


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def raw_decrypt(private_key: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
    """What CKM_RSA_X_509 gives: c^d mod n, as many bytes as the modulus."""
    numbers = private_key.private_numbers()
    n = numbers.public_numbers.n
    return pow(int.from_bytes(ciphertext, "big"), numbers.d, n).to_bytes(256, "big")


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("length", [0, 1, 32, 190])
def test_decodes_what_cryptography_encrypts(private_key, hash_name, length):
    algorithm = HASHES[hash_name]
    message = os.urandom(length)
    ciphertext = private_key.public_key().encrypt(message, padding.OAEP(padding.MGF1(algorithm), algorithm, None))
    assert oaep_decode(raw_decrypt(private_key, ciphertext), 256, hash_name) == message


def test_decodes_the_largest_message(private_key):
    message = os.urandom(214)  # 256 - 2 * 20 - 2 with SHA-1
    sha1 = hashes.SHA1()
    ciphertext = private_key.public_key().encrypt(message, padding.OAEP(padding.MGF1(sha1), sha1, None))
    assert oaep_decode(raw_decrypt(private_key, ciphertext), 256, "SHA1") == message


def encode(message: bytes, hash_name: str = "SHA256", first: int = 0, label_hash: bytes | None = None,
           padding_string: bytes | None = None, separator: int = 1, k: int = 256) -> bytes:
    """An OAEP block built by hand (RFC 8017 §7.1.1, step 2), with one part made wrong at will."""
    digest = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256}[hash_name]
    h_len = digest().digest_size
    l_hash = digest(b"").digest() if label_hash is None else label_hash
    ps = bytes(k - len(message) - 2 * h_len - 2) if padding_string is None else padding_string
    db = l_hash + ps + bytes([separator]) + message
    seed = os.urandom(h_len)
    masked_db = _xor(db, _mgf1(seed, k - h_len - 1, hash_name))
    masked_seed = _xor(seed, _mgf1(masked_db, h_len, hash_name))
    return bytes([first]) + masked_seed + masked_db


def test_the_hand_made_block_decodes():
    assert oaep_decode(encode(b"hello"), 256, "SHA256") == b"hello"


@pytest.mark.parametrize("block", [
    pytest.param(lambda: encode(b"hello", first=1), id="first byte not zero"),
    pytest.param(lambda: encode(b"hello", first=0x80), id="first byte high"),
    pytest.param(lambda: encode(b"hello", label_hash=bytes(32)), id="wrong label hash"),
    pytest.param(lambda: encode(b"hello", padding_string=bytes(100) + b"\x07" + bytes(84)), id="non-zero padding"),
    pytest.param(lambda: encode(b"hello", separator=2), id="separator 2"),
    pytest.param(lambda: encode(b"", padding_string=bytes(256 - 66 + 1), separator=0), id="no separator"),
    pytest.param(lambda: encode(b"hello", hash_name="SHA1"), id="other hash"),
    pytest.param(lambda: os.urandom(256), id="random"),
    pytest.param(lambda: bytes(256), id="zeros"),
    pytest.param(lambda: b"\xff" * 257, id="too long"),
])
def test_every_malformed_block_gives_one_error(block):
    with pytest.raises(OaepDecodingError) as caught:
        oaep_decode(block(), 256, "SHA256")
    assert str(caught.value) == "decryption error"


def test_a_tampered_ciphertext_gives_the_same_error(private_key):
    sha256 = hashes.SHA256()
    ciphertext = bytearray(private_key.public_key().encrypt(b"m", padding.OAEP(padding.MGF1(sha256), sha256, None)))
    ciphertext[100] ^= 1
    with pytest.raises(OaepDecodingError, match="^decryption error$"):
        oaep_decode(raw_decrypt(private_key, bytes(ciphertext)), 256, "SHA256")


def test_a_modulus_too_small_for_the_hash():
    with pytest.raises(OaepDecodingError):
        oaep_decode(bytes(64), 64, "SHA256")
