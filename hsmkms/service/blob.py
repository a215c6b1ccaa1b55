"""The CiphertextBlob format, as pure functions.

Format 1 (the only one today) is the layout Alibaba's own tooling parses:

    base64( key-version id, 36 ASCII characters (a lowercase UUID)
          || IV, 12 bytes
          || AES-256-GCM ciphertext
          || GCM tag, 16 bytes )

Decrypt needs no KeyId because the version id names the key.  Format 1 is recognised by its first byte,
a lowercase hexadecimal digit (the UUID's); a later format will begin with a byte that cannot start a UUID
(its format number, 0x02 ...), so old and new blobs stay distinguishable without a trial decryption.
Known-answer tests in ``tests/unit/test_blob.py`` pin this layout.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from hsmkms.errors import InvalidCiphertext

FORMAT_1 = 1
VERSION_ID_LEN = 36
IV_LEN = 12
TAG_LEN = 16
# Longest ciphertext + tag accepted: room for a 6 KB Encrypt plaintext; data keys are far smaller.
MAX_SEALED_LEN = 8 * 1024

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_HEX_DIGITS = frozenset(b"0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Blob:
    key_version_id: str
    iv: bytes
    sealed: bytes  # GCM ciphertext followed by its tag


def encode(blob: Blob) -> str:
    version = blob.key_version_id.encode("ascii")
    if not _UUID.match(version) or len(blob.iv) != IV_LEN or len(blob.sealed) < TAG_LEN:
        raise ValueError("malformed blob parts")
    return base64.b64encode(version + blob.iv + blob.sealed).decode("ascii")


def decode(text: str) -> Blob:
    """Parse a blob; any malformation raises the one opaque InvalidCiphertext error."""
    if len(text) > 4 * ((VERSION_ID_LEN + IV_LEN + MAX_SEALED_LEN) // 3 + 1):
        raise InvalidCiphertext()
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise InvalidCiphertext() from None
    if not raw or raw[0] not in _HEX_DIGITS:
        raise InvalidCiphertext()  # not format 1, and no other format exists yet
    if not VERSION_ID_LEN + IV_LEN + TAG_LEN <= len(raw) <= VERSION_ID_LEN + IV_LEN + MAX_SEALED_LEN:
        raise InvalidCiphertext()
    version = raw[:VERSION_ID_LEN]
    if not _UUID.match(version):
        raise InvalidCiphertext()
    return Blob(
        key_version_id=version.decode("ascii"),
        iv=raw[VERSION_ID_LEN : VERSION_ID_LEN + IV_LEN],
        sealed=raw[VERSION_ID_LEN + IV_LEN :],
    )
