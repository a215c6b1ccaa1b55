"""Data keys, Encrypt and Decrypt: every wrap and unwrap is AES-GCM inside the HSM.

Plaintext handling follows the reference §5.1: Encrypt seals the UTF-8 bytes of the Plaintext string as
received and Decrypt returns exactly that string; GenerateDataKey seals the Base64 text of the data key, so
that Decrypt of its blob returns the same Base64 text GenerateDataKey returned.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from hsmkms.errors import InvalidCiphertext, InvalidParameter
from hsmkms.hsm.backend import DecryptionFailed, HsmBackend
from hsmkms.service import blob, states
from hsmkms.service.asymmetric import is_symmetric, require_symmetric
from hsmkms.service.context import canonical_aad
from hsmkms.service.export import WrappingKey
from hsmkms.service.keys import KeyService
from hsmkms.service.passwords import PasswordRules, random_password
from hsmkms.store.base import KeyRecord, VersionRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str
    key_version_id: str
    ciphertext_blob: str


@dataclass(frozen=True, slots=True)
class DataKey:
    sealed: Sealed
    plaintext_b64: str


@dataclass(frozen=True, slots=True)
class Opened:
    key_id: str
    key_version_id: str
    plaintext: str


@dataclass(frozen=True, slots=True)
class Exported:
    key_id: str
    key_version_id: str
    exported_data_key: str  # Base64, encrypted to the caller's public key


@dataclass(frozen=True, slots=True)
class Located:
    """A CiphertextBlob decoded once, with the key version and the key it names."""

    blob: blob.Blob
    version: VersionRecord
    key: KeyRecord


class CryptoService:
    """``token_iv``: the token makes each GCM IV ([hsm] gcm_iv = "token"), and blobs are format 2; otherwise
    the IV comes from the token's RNG and blobs are format 1.  Blobs of either format decrypt either way."""

    def __init__(self, keys: KeyService, hsm: HsmBackend, token_iv: bool = False):
        self.keys = keys
        self.hsm = hsm
        self.token_iv = token_iv
        self._iv_len = 0 if token_iv else blob.IV_LEN  # what the host draws for an IV

    def generate_data_key(self, key: KeyRecord, number_of_bytes: int, context: Mapping[str, str],
                          action: str = "GenerateDataKey") -> DataKey:
        states.check(action, key.state)
        require_symmetric(key)
        # One RNG round trip serves both the data key and the IV.
        random = self.hsm.random(number_of_bytes + self._iv_len)
        data_key, iv = random[:number_of_bytes], random[number_of_bytes:]
        plaintext_b64 = base64.b64encode(data_key).decode("ascii")
        sealed = self._seal(key.key_id, key.primary_version_id, iv, plaintext_b64, context)
        return DataKey(sealed, plaintext_b64)

    def encrypt(self, key: KeyRecord, plaintext: str, context: Mapping[str, str]) -> Sealed:
        states.check("Encrypt", key.state)
        require_symmetric(key)
        iv = self.hsm.random(self._iv_len) if self._iv_len else b""
        return self._seal(key.key_id, key.primary_version_id, iv, plaintext, context)

    def locate(self, ciphertext_blob: str) -> Located:
        """Decode a blob and find the key version and key it names (InvalidCiphertext, Forbidden.KeyNotFound)."""
        parsed = blob.decode(ciphertext_blob)
        version = self.keys.version(parsed.key_version_id)
        key = self.keys.key(version.key_id)
        if not is_symmetric(key):  # a made-up blob naming a key pair's or HMAC key's version
            raise InvalidCiphertext()
        return Located(parsed, version, key)

    def open_blob(self, ciphertext_blob: str, context: Mapping[str, str]) -> Opened:
        """Locate and decrypt in one step (the CLI and tests; the API locates first, to authorize)."""
        return self.decrypt(self.locate(ciphertext_blob), context)

    def decrypt(self, located: Located, context: Mapping[str, str], action: str = "Decrypt") -> Opened:
        states.check(action, located.key.state)
        parsed = located.blob
        try:
            plaintext = self.hsm.gcm_decrypt(located.version.version_id, parsed.iv, parsed.sealed,
                                             canonical_aad(context))
        except DecryptionFailed:
            raise InvalidCiphertext() from None
        try:
            text = plaintext.decode("utf-8")
        except UnicodeDecodeError:  # sealed by something other than this service
            raise InvalidCiphertext() from None
        return Opened(located.key.key_id, located.version.version_id, text)

    def re_encrypt(self, located: Located, source_context: Mapping[str, str], destination: KeyRecord,
                   destination_context: Mapping[str, str]) -> Sealed:
        """Open under the source key and context, seal under the destination's: the plaintext is never returned
        and exists here only between the two HSM calls."""
        states.check("ReEncrypt", destination.state)
        require_symmetric(destination)
        opened = self.decrypt(located, source_context, action="ReEncrypt")
        iv = self.hsm.random(self._iv_len) if self._iv_len else b""
        return self._seal(destination.key_id, destination.primary_version_id, iv, opened.plaintext,
                          destination_context)

    def generate_and_export_data_key(self, key: KeyRecord, number_of_bytes: int, context: Mapping[str, str],
                                     wrapping: WrappingKey) -> tuple[DataKey, str]:
        """A new data key sealed under ``key`` and, as well, encrypted to the caller's public key."""
        if number_of_bytes > wrapping.max_plaintext_bytes():
            raise InvalidParameter("NumberOfBytes", f"The wrapping key carries at most "
                                                    f"{wrapping.max_plaintext_bytes()} bytes.")
        data_key = self.generate_data_key(key, number_of_bytes, context, action="GenerateAndExportDataKey")
        return data_key, wrapping.wrap(base64.b64decode(data_key.plaintext_b64))

    def export_data_key(self, located: Located, context: Mapping[str, str], wrapping: WrappingKey) -> Exported:
        """The data key a blob holds, encrypted to the caller's public key."""
        opened = self.decrypt(located, context, action="ExportDataKey")
        try:
            data_key = base64.b64decode(opened.plaintext, validate=True)
        except (ValueError, binascii.Error):
            raise InvalidParameter("CiphertextBlob", "It does not hold a data key.") from None
        return Exported(opened.key_id, opened.key_version_id, wrapping.wrap(data_key))

    def random_password(self, rules: PasswordRules) -> str:
        return random_password(rules, self.hsm.random)

    def _seal(self, key_id: str, version_id: str, iv: bytes, plaintext: str,
              context: Mapping[str, str]) -> Sealed:
        """Seal under ``iv`` (format 1), or, with ``token_iv`` (``iv`` empty), under an IV the token makes."""
        if self.token_iv:
            iv, sealed = self.hsm.gcm_encrypt_token_iv(version_id, plaintext.encode("utf-8"), canonical_aad(context))
            return Sealed(key_id, version_id, blob.encode(blob.Blob(version_id, iv, sealed, blob.FORMAT_2)))
        sealed = self.hsm.gcm_encrypt(version_id, iv, plaintext.encode("utf-8"), canonical_aad(context))
        return Sealed(key_id, version_id, blob.encode(blob.Blob(version_id, iv, sealed)))
