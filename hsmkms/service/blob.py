"""The CiphertextBlob formats, as pure functions.

Format 1 is the layout Alibaba's own tooling parses, made whenever the host makes the GCM IV ([hsm] gcm_iv =
"host", the default):

    base64( key-version id, 36 ASCII characters (a lowercase UUID)
          || IV, 12 bytes
          || AES-256-GCM ciphertext
          || GCM tag, 16 bytes )

Format 2 is made when the token makes the IV ([hsm] gcm_iv = "token"), whose length the token chooses:

    base64( 0x02 || key-version id, 36 ASCII characters || IV length, 1 byte (12 or 16) || IV
          || AES-256-GCM ciphertext || GCM tag, 16 bytes )

Decrypt needs no KeyId because the version id names the key.  A format is recognised by its first byte: a
lowercase hexadecimal digit (the UUID's) for format 1, its number for later ones (which cannot start a
UUID), so blobs of every format stay readable, whatever the setting, without a trial decryption.
Known-answer tests in ``tests/unit/test_blob.py`` pin both layouts.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from hsmkms.errors import InvalidCiphertext

FORMAT_1 = 1
FORMAT_2 = 2
VERSION_ID_LEN = 36
IV_LEN = 12  # format 1's IV
FORMAT_2_IV_LENS = (12, 16)  # what tokens that make IVs make: 96 bits, or 128 (Thales Luna before firmware 7.9.3)
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
    format: int = FORMAT_1


def encode(blob: Blob) -> str:
    version = blob.key_version_id.encode("ascii")
    if not _UUID.match(version) or len(blob.sealed) < TAG_LEN:
        raise ValueError("malformed blob parts")
    if blob.format == FORMAT_1 and len(blob.iv) == IV_LEN:
        raw = version + blob.iv + blob.sealed
    elif blob.format == FORMAT_2 and len(blob.iv) in FORMAT_2_IV_LENS:
        raw = bytes([FORMAT_2]) + version + bytes([len(blob.iv)]) + blob.iv + blob.sealed
    else:
        raise ValueError("malformed blob parts")
    return base64.b64encode(raw).decode("ascii")


_FORMAT_2_HEADER = 1 + VERSION_ID_LEN + 1
_MAX_RAW_LEN = _FORMAT_2_HEADER + max(FORMAT_2_IV_LENS) + MAX_SEALED_LEN


def decode(text: str) -> Blob:
    """Parse a blob of any format; any malformation raises the one opaque InvalidCiphertext error."""
    if len(text) > 4 * (_MAX_RAW_LEN // 3 + 1):
        raise InvalidCiphertext()
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise InvalidCiphertext() from None
    if not raw:
        raise InvalidCiphertext()
    if raw[0] in _HEX_DIGITS:
        return _parts(raw, 0, IV_LEN, FORMAT_1)
    if raw[0] == FORMAT_2 and len(raw) > _FORMAT_2_HEADER and raw[_FORMAT_2_HEADER - 1] in FORMAT_2_IV_LENS:
        return _parts(raw, 1, raw[_FORMAT_2_HEADER - 1], FORMAT_2)
    raise InvalidCiphertext()


def _parts(raw: bytes, version_at: int, iv_len: int, blob_format: int) -> Blob:
    """The version id at ``version_at``, then (format 2: after the length byte) the IV, then ciphertext || tag."""
    iv_at = version_at + VERSION_ID_LEN + (1 if blob_format == FORMAT_2 else 0)
    if not iv_at + iv_len + TAG_LEN <= len(raw) <= iv_at + iv_len + MAX_SEALED_LEN:
        raise InvalidCiphertext()
    version = raw[version_at : version_at + VERSION_ID_LEN]
    if not _UUID.match(version):
        raise InvalidCiphertext()
    return Blob(
        key_version_id=version.decode("ascii"),
        iv=raw[iv_at : iv_at + iv_len],
        sealed=raw[iv_at + iv_len :],
        format=blob_format,
    )
