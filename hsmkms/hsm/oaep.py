"""RSAES-OAEP decoding (RFC 8017 §7.1.2, step 3) of the output of a raw RSA private-key operation.

For a token that does the raw RSA operation (CKM_RSA_X_509) but not OAEP with the hash a caller asks for
(SoftHSM 2.6.1 refuses RSA-OAEP with SHA-256), the private-key operation runs in the token and only the
unpadding runs here; the private key never leaves the token.  That is the ``oaep_unpad_on_host`` capability
of a token profile (hsmkms/hsm/profiles.py).

The decoding must not tell an attacker *why* a ciphertext was refused (Manger's attack on OAEP needs only to
learn whether the first byte was zero).  So:

- every check (first byte, label hash, padding string, separator) is computed over the whole block, with no
  branch and no early return on the data: results are folded into one integer with bit operations;
- the one decision is taken at the end, and every failure raises the same ``OaepDecodingError``, with the
  same message.

Python gives no hard timing guarantee (big-integer and bytes operations may vary with their values), but
nothing here branches or returns early on secret data, which is what the known attacks measure.  Pure: no
PKCS#11 here.
"""

from __future__ import annotations

import hashlib
import hmac

HASHES = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256}


class OaepDecodingError(Exception):
    """The block is not a valid OAEP encoding (one error for every reason)."""

    def __init__(self) -> None:
        super().__init__("decryption error")


def _mgf1(seed: bytes, length: int, hash_name: str) -> bytes:
    digest = HASHES[hash_name]
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += digest(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _is_zero(value: int) -> int:
    """1 when a byte value is 0, else 0, without a branch."""
    return ((value - 1) >> 8) & 1


def oaep_decode(block: bytes, modulus_bytes: int, hash_name: str, label: bytes = b"") -> bytes:
    """The message inside ``block``, the raw RSA output (``modulus_bytes`` long, left-padded with zeros).

    Raises OaepDecodingError for any malformed block, always the same way."""
    digest = HASHES[hash_name]
    h_len = digest().digest_size
    # Public facts (lengths), not secret: checked first, with the same error.
    if modulus_bytes < 2 * h_len + 2 or len(block) > modulus_bytes:
        raise OaepDecodingError()
    em = block.rjust(modulus_bytes, b"\x00")
    first, masked_seed, masked_db = em[0], em[1:1 + h_len], em[1 + h_len:]
    seed = _xor(masked_seed, _mgf1(masked_db, h_len, hash_name))
    db = _xor(masked_db, _mgf1(seed, len(masked_db), hash_name))

    bad = 1 - _is_zero(first)
    bad |= 1 - int(hmac.compare_digest(db[:h_len], digest(label).digest()))
    # DB = lHash || PS (zeros) || 0x01 || M: find the first 0x01 after the zeros, looking at every byte.
    found, index = 0, 0
    for position, byte in enumerate(db[h_len:]):
        is_one = _is_zero(byte ^ 1)
        is_zero = _is_zero(byte)
        first_one = is_one & (1 - found)
        index += first_one * position
        bad |= (1 - found) & (1 - is_zero) & (1 - is_one)  # a byte other than 0 before the separator
        found |= is_one
    bad |= 1 - found
    message = db[h_len + index + 1:]
    if bad:
        raise OaepDecodingError()
    return message
