"""Key-material import (BYOK): GetParametersForImport, ImportKeyMaterial, DeleteKeyMaterial, and the expiry of
import tokens and of imported material.

How it fits the rest:
- An EXTERNAL key is created with its one version id (DescribeKey's PrimaryKeyVersion) and no HSM object: it
  is PendingImport.  Importing makes that version's object (C_UnwrapKey inside the HSM, into the master-key
  template); DeleteKeyMaterial or the material's expiry destroys it, and a re-import of the same material makes
  it again under the same version id, so every blob made before decrypts again.  EXTERNAL keys have no other
  version (no rotation, no CreateKeyVersion), as in Alibaba Cloud.
- The material's value never reaches the host: it arrives wrapped with an RSA key whose private half was
  generated in the HSM, unwrap-only.  What is kept is a check value (the GCM sealing of a fixed block under the
  imported key, made in the HSM); a re-import must open it, or it is different material (InvalidKeyMaterial).
- An ImportToken is 32 random bytes from the HSM (Base64url), recorded with its key, wrapping key and algorithm:
  it cannot be guessed, and names nothing by itself.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from dataclasses import dataclass

from hsmkms.errors import (
    ExpiredImportToken,
    InvalidImportToken,
    InvalidKeyMaterial,
    InvalidParameter,
    StateModifiedFailed,
    UnsupportedOrigin,
)
from hsmkms.hsm.backend import IMPORT_WRAPPING_ALGORITHMS, DecryptionFailed, UnwrapFailed
from hsmkms.service import states
from hsmkms.service.keys import KeyService, hsm_label
from hsmkms.store.base import AlreadyExists, ImportTokenRecord, KeyMaterialRecord, KeyRecord, PendingObject

log = logging.getLogger(__name__)

EXTERNAL = "EXTERNAL"
IMPORT_TOKEN_SECONDS = 24 * 3600
WRAPPING_KEY_SPECS = ("RSA_2048",)
WRAPPED_MATERIAL_BYTES = 256  # an RSA-2048 ciphertext
MAX_IMPORT_TOKEN_CHARS = 128
CHECK_BLOCK = bytes(16)
CHECK_AAD = b"hsmkms:key-material-check"
IV_BYTES = 12


def wrapping_label(key_id: str, wrapping_id: str) -> str:
    return f"hsmkms:import:{key_id}:{wrapping_id}"


@dataclass(frozen=True)
class ImportParameters:
    key_id: str
    import_token: str
    public_key_der: bytes
    expires_at: int


class ImportService:
    def __init__(self, keys: KeyService):
        self.keys = keys
        self.store = keys.store
        self.hsm = keys.hsm

    def _external(self, key: KeyRecord, action: str) -> None:
        states.check(action, key.state)
        if key.origin != EXTERNAL:
            raise UnsupportedOrigin()

    def parameters(self, key: KeyRecord, wrapping_key_spec: str, algorithm: str) -> ImportParameters:
        self._external(key, "GetParametersForImport")
        if wrapping_key_spec == "EC_SM2":
            raise InvalidParameter("WrappingKeySpec", "EC_SM2 (SM2PKE) is not supported here; use RSA_2048.")
        if wrapping_key_spec not in WRAPPING_KEY_SPECS:
            raise InvalidParameter("WrappingKeySpec", "Supported here: RSA_2048.")
        if algorithm not in IMPORT_WRAPPING_ALGORITHMS:
            raise InvalidParameter("WrappingAlgorithm", f"Supported: {', '.join(IMPORT_WRAPPING_ALGORITHMS)}.")
        offered = self.hsm.unwrap_algorithms()
        if algorithm not in offered:
            # Unwrapping on the host would put the material in its memory: refused instead.
            raise InvalidParameter("WrappingAlgorithm", f"This HSM cannot unwrap with {algorithm} inside the "
                                                        f"token; it offers {', '.join(offered) or 'none'}.")
        now = self.keys.now()
        wrapping_id = str(uuid.uuid4())
        self.store.begin_object(PendingObject(wrapping_id, key.key_id, "create", now))
        try:
            der = self.hsm.create_wrapping_key_pair(wrapping_id, wrapping_label(key.key_id, wrapping_id))
            token = base64.urlsafe_b64encode(self.hsm.random(32)).decode("ascii").rstrip("=")
            record = ImportTokenRecord(token, key.key_id, wrapping_id, algorithm, now, now + IMPORT_TOKEN_SECONDS)
            self.store.add_import_token(record)
        except BaseException:
            self._abandon(wrapping_id)
            raise
        return ImportParameters(key.key_id, token, der, record.expires_at)

    def import_material(self, key: KeyRecord, import_token: str, encrypted_b64: str, expire_unix: int) -> None:
        self._external(key, "ImportKeyMaterial")
        now = self.keys.now()
        if expire_unix and expire_unix <= now:
            raise InvalidParameter("KeyMaterialExpireUnix", "It must be 0 (never) or a time in the future.")
        token = self.store.get_import_token(import_token) if len(import_token) <= MAX_IMPORT_TOKEN_CHARS else None
        if token is None or token.key_id != key.key_id:
            raise InvalidImportToken()
        if token.expires_at <= now:
            raise ExpiredImportToken()
        try:
            wrapped = base64.b64decode(encrypted_b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParameter("EncryptedKeyMaterial", "It must be Base64.") from None
        if len(wrapped) != WRAPPED_MATERIAL_BYTES:
            raise InvalidKeyMaterial()
        known = self.store.get_key_material(key.key_id)
        # The version's own object when the material is absent; a throwaway one to compare with when present.
        object_id = str(uuid.uuid4()) if known and known.present else key.primary_version_id
        try:
            self.store.begin_object(PendingObject(object_id, key.key_id, "create", now))
        except AlreadyExists:  # another import or deletion of this key's material is under way
            raise StateModifiedFailed() from None
        try:
            self.hsm.unwrap_aes_key(token.wrapping_id, token.algorithm, wrapped, object_id,
                                    hsm_label(key.key_id, object_id))
        except UnwrapFailed:
            self.store.finish_object(object_id)
            raise InvalidKeyMaterial() from None
        except BaseException:
            self._abandon(object_id)
            raise
        try:
            check_value = known.check_value if known else self._check_value(object_id)
            if known and not self._opens(object_id, check_value):
                raise InvalidKeyMaterial()
            if object_id != key.primary_version_id:
                self._abandon(object_id)
            material = KeyMaterialRecord(key.key_id, check_value, True, expire_unix or None, now)
            if not self.store.record_key_material(material, object_id, key.state):
                raise StateModifiedFailed()
        except BaseException:
            self._abandon(object_id)
            raise
        self.keys.watch.invalidate()
        log.info("imported key material for key %s (expires %s)", key.key_id, expire_unix or "never")

    def _check_value(self, object_id: str) -> bytes:
        if getattr(self.hsm, "token_makes_iv", False):
            iv, sealed = self.hsm.gcm_encrypt_token_iv(object_id, CHECK_BLOCK, CHECK_AAD)
        else:
            iv = self.hsm.random(IV_BYTES)
            sealed = self.hsm.gcm_encrypt(object_id, iv, CHECK_BLOCK, CHECK_AAD)
        return bytes([len(iv)]) + iv + sealed

    def _opens(self, object_id: str, check_value: bytes) -> bool:
        iv_length = check_value[0]
        iv, sealed = check_value[1:1 + iv_length], check_value[1 + iv_length:]
        try:
            return self.hsm.gcm_decrypt(object_id, iv, sealed, CHECK_AAD) == CHECK_BLOCK
        except DecryptionFailed:
            return False

    def material_expires_at(self, key: KeyRecord) -> int | None:
        """When the key's imported material expires (DescribeKey's MaterialExpireTime); None: never, or none."""
        if key.origin != EXTERNAL:
            return None
        material = self.store.get_key_material(key.key_id)
        return material.expires_at if material and material.present else None

    def delete_material(self, key: KeyRecord, action: str = "DeleteKeyMaterial") -> None:
        self._external(key, action)
        version_id = key.primary_version_id
        known = self.store.get_key_material(key.key_id)
        if known is None or not known.present:
            return
        destroy = PendingObject(version_id, key.key_id, "destroy", self.keys.now())
        try:
            cleared = self.store.clear_key_material(key.key_id, key.state, destroy)
        except AlreadyExists:  # an import or deletion of this key's material is under way
            cleared = False
        if not cleared:
            raise StateModifiedFailed()
        self.keys.watch.invalidate()
        self.hsm.destroy_key(version_id)
        self.store.finish_object(version_id)
        log.info("deleted the key material of key %s", key.key_id)

    def _abandon(self, object_id: str) -> None:
        try:
            self.hsm.destroy_key(object_id)  # a wrapping key pair's too (by id)
            self.store.finish_object(object_id)
        except Exception as exc:
            log.error("could not undo HSM object %s (%s); recovery will remove it", object_id, exc)

    # --- scheduled -------------------------------------------------------------------------------------

    def expire_materials(self) -> list[str]:
        """Destroy material whose KeyMaterialExpireUnix has passed: its key returns to PendingImport."""
        expired = []
        for key_id in self.store.expired_materials(self.keys.now()):
            key = self.store.get_key(key_id)
            if key is None:
                continue
            try:
                self.delete_material(key)
            except StateModifiedFailed:
                continue  # changed meanwhile: the next tick looks again
            expired.append(key_id)
        return expired

    def destroy_expired_tokens(self) -> list[str]:
        """Destroy the wrapping key pairs of import tokens past their 24 hours, and forget the tokens."""
        destroyed = []
        for token in self.store.expired_import_tokens(self.keys.now()):
            self.store.begin_object(PendingObject(token.wrapping_id, token.key_id, "destroy", self.keys.now()))
            self.hsm.destroy_wrapping_key(token.wrapping_id)
            self.store.delete_import_token(token.token_id)
            self.store.finish_object(token.wrapping_id)
            destroyed.append(token.wrapping_id)
        return destroyed

