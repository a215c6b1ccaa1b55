"""What the service needs from an HSM, and the few errors it can raise.

Nothing above this package sees a python-pkcs11 type: keys are addressed by an object id string (a CMK
version id, or the name of a service key), and PKCS#11 failures arrive as one of the errors below with the
original exception kept as ``__cause__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class HsmError(Exception):
    """The HSM refused or failed an operation for a reason that is not the caller's fault."""


class HsmUnavailable(HsmError):
    """The token cannot be reached: not present, not logged in, session lost, device error."""


class HsmKeyMissing(HsmUnavailable):
    """No key object with the requested id is in the token: for a live key, the token is not what it should be
    (restored from an old backup, or gone), so callers see it as unavailability, not as their fault."""


class HsmConfigurationError(HsmError):
    """The token refused what it was asked (a mechanism, a parameter, a template): hsmkms or the token is
    configured wrongly.  Not a fault of the device: the session stays open."""


class HsmUnsupported(HsmConfigurationError):
    """The token cannot make or use a key of this kind (a curve, a size, a mechanism it lacks): the caller
    asked for something this HSM does not offer, which is answered as a client error, not a fault."""


class HsmAuthFailed(HsmError):
    """The PIN was refused (wrong, locked or expired)."""


class DecryptionFailed(Exception):
    """Authenticated decryption failed: wrong key, wrong AAD or tampered data.  The caller's fault."""


class UnwrapFailed(DecryptionFailed):
    """Wrapped key material did not open inside the token (wrong wrapping key, algorithm or padding), or it
    opened to a key of the wrong size.  The caller's fault."""


# Import (BYOK) wrapping algorithms, by their API names.
IMPORT_WRAPPING_ALGORITHMS = ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1", "RSAES_PKCS1_V1_5")


@dataclass(frozen=True)
class KeyObjectInfo:
    """Public attributes of a key object, read back from the token (never its value)."""

    object_id: str
    label: str
    token: bool
    private: bool
    sensitive: bool
    extractable: bool
    modifiable: bool
    always_sensitive: bool
    never_extractable: bool
    encrypt: bool
    decrypt: bool
    wrap: bool
    unwrap: bool
    sign: bool
    verify: bool
    derive: bool
    key_bits: int
    # CKA_ALLOWED_MECHANISMS by name, e.g. ("AES_GCM",); () = any mechanism; None = the token has no such attribute
    allowed_mechanisms: tuple[str, ...] | None


class HsmBackend(Protocol):
    def open(self) -> None:
        """Load the module, find the token, log in; idempotent, and re-done after a fork."""

    def close(self) -> None: ...

    def ping(self, canary_id: str) -> bool:
        """True when the token serves: a real GCM encrypt and decrypt with the key ``canary_id`` (cached briefly)."""

    def random(self, length: int) -> bytes:
        """``length`` bytes from the token's RNG (C_GenerateRandom), possibly through a pool refilled from it."""

    def pooled_random(self, length: int) -> bytes | None:
        """``random(length)`` if it can be served without calling the token, else None."""

    def create_aes_key(self, object_id: str, label: str) -> None:
        """Generate a persistent, sensitive, non-extractable AES-256 key in the token."""

    def destroy_key(self, object_id: str) -> None: ...

    def has_key(self, object_id: str) -> bool: ...

    def list_key_ids(self) -> dict[str, str]:
        """Every key object of this deployment in the token: object id -> label (as given at creation)."""

    def foreign_objects(self) -> list[str]:
        """Token labels of hsmkms objects of other deployments, as of the last list_key_ids."""

    def key_info(self, object_id: str) -> KeyObjectInfo: ...

    def allowed_mechanisms(self, object_id: str) -> tuple[str, ...] | None:
        """The key's CKA_ALLOWED_MECHANISMS by name; () = unrestricted; None = the token has no such attribute."""

    def gcm_encrypt(self, object_id: str, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM inside the token; returns ciphertext || 16-byte tag."""

    def gcm_encrypt_token_iv(self, object_id: str, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """AES-GCM inside the token with an IV the token makes; returns (IV, ciphertext || 16-byte tag)."""

    def gcm_decrypt(self, object_id: str, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Inverse of gcm_encrypt; raises DecryptionFailed when the tag does not verify."""

    # --- key-material import (BYOK) ----------------------------------------------------------------------

    def create_wrapping_key_pair(self, object_id: str, label: str) -> bytes:
        """Generate an RSA-2048 key pair in the token for importing key material; returns its public key as DER
        SubjectPublicKeyInfo.  The private key is a token object, sensitive, non-extractable, good only for
        C_UnwrapKey; the public key is not kept."""

    def unwrap_algorithms(self) -> tuple[str, ...]:
        """The IMPORT_WRAPPING_ALGORITHMS this token can unwrap an AES key with (measured once per process)."""

    def unwrap_aes_key(self, wrapping_id: str, algorithm: str, wrapped: bytes, object_id: str, label: str) -> None:
        """C_UnwrapKey ``wrapped`` with the wrapping private key into a master key object (the master-key
        template: sensitive, non-extractable, AES-GCM only).  UnwrapFailed when it does not open to 32 bytes."""

    def destroy_wrapping_key(self, object_id: str) -> None:
        """Destroy a wrapping private key (nothing when it is gone already)."""

    def list_wrapping_key_ids(self) -> dict[str, str]:
        """Every wrapping private key of this deployment in the token: object id -> label."""

    def wrapping_key_info(self, object_id: str) -> KeyObjectInfo: ...

    # --- asymmetric and HMAC keys (names of key specs and algorithms as the Alibaba API spells them) ---------

    def create_key_pair(self, object_id: str, label: str, key_spec: str, usage: str) -> None:
        """Generate a key pair in the token: a sensitive, non-extractable private key usable only for ``usage``
        (``SIGN/VERIFY`` or ``ENCRYPT/DECRYPT``) and its public key, both token objects with this id and label.
        ``key_spec``: RSA_2048, RSA_3072, EC_P256 or EC_P256K.  HsmUnsupported when the token cannot."""

    def create_hmac_key(self, object_id: str, label: str, algorithm: str) -> None:
        """Generate a sensitive, non-extractable generic secret for ``algorithm`` (HMAC_SHA_256 ...), as long as
        the hash's output, usable only to compute that MAC.  HsmUnsupported when the token cannot."""

    def public_key(self, object_id: str) -> bytes:
        """The key pair's public key, DER SubjectPublicKeyInfo, read from the token's public attributes."""

    def sign_digest(self, object_id: str, algorithm: str, digest: bytes) -> bytes:
        """Sign a SHA-256 digest in the token: RSA_PSS_SHA_256, RSA_PKCS1_SHA_256 or ECDSA_SHA_256 (DER)."""

    def rsa_oaep_decrypt(self, object_id: str, hash_name: str, ciphertext: bytes) -> bytes:
        """RSAES-OAEP decryption (``hash_name`` SHA1 or SHA256, MGF1 with the same hash, empty label) with the
        private key in the token; DecryptionFailed for a ciphertext that does not decrypt."""

    def hmac(self, object_id: str, algorithm: str, message: bytes) -> bytes:
        """The HMAC of ``message`` computed in the token with the key's one algorithm."""
