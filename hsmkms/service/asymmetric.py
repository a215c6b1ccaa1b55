"""Asymmetric keys (RSA and EC) and HMAC keys: which key specs and usages exist, and the operations on them.

- Private-key operations (AsymmetricSign, AsymmetricDecrypt) and every MAC run in the HSM.  Public-key
  operations (AsymmetricVerify, AsymmetricEncrypt) run here with ``cryptography`` on the public key read from
  the token: they use no secret.
- Every asymmetric call names its key version (KeyVersionId is mandatory, reference §2.5); a MAC uses the
  key's primary version.
- A key serves one usage: a symmetric operation on an asymmetric key, or the reverse, or signing with an
  ENCRYPT/DECRYPT key, is ``Rejected.UnsupportedOperation`` (the reference's code for an operation the key
  does not support); an algorithm that does not fit the key is ``InvalidParameter``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as host_hmac
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from hsmkms.errors import InvalidParameter, KeyNotFound, KeyVersionNotFound, UnsupportedOperation
from hsmkms.hsm.backend import DecryptionFailed, HsmBackend
from hsmkms.service import states
from hsmkms.service.keys import KeyService
from hsmkms.store.base import KeyRecord, VersionRecord

SYMMETRIC_SPECS = {"Aliyun_AES_256"}
SIGN_VERIFY, ENCRYPT_DECRYPT, MAC_USAGE = "SIGN/VERIFY", "ENCRYPT/DECRYPT", "GENERATE/VERIFY_MAC"
# Key spec -> the usages it may have, the first being the default (reference §2.7).
ASYMMETRIC_SPECS = {
    "RSA_2048": (ENCRYPT_DECRYPT, SIGN_VERIFY),
    "RSA_3072": (ENCRYPT_DECRYPT, SIGN_VERIFY),
    "EC_P256": (SIGN_VERIFY,),
    "EC_P256K": (SIGN_VERIFY,),
}
# HMAC key specs: named after the one MAC algorithm each serves (Alibaba's names for HMAC key specs are
# UNCONFIRMED; the algorithm names are GenerateMac's, reference §2.4).  The key is as long as the hash output.
HMAC_SPECS = {"HMAC_SHA_224": 28, "HMAC_SHA_256": 32, "HMAC_SHA_384": 48, "HMAC_SHA_512": 64}
MAC_ALGORITHMS = ("HMAC_SM3", "HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512")
# Key specs the API has and hsmkms refuses, with why.
REFUSED_SPECS = {
    "EC_SM2": "SM2 keys are not supported: PKCS#11 tokens offer no SM2 mechanism here.",
    "Aliyun_SM4": "SM4 keys are not supported: PKCS#11 tokens offer no SM4 mechanism here.",
    "HMAC_SM3": "HMAC-SM3 keys are not supported: PKCS#11 tokens offer no SM3 mechanism here.",
}
ALL_SPECS = (*SYMMETRIC_SPECS, *ASYMMETRIC_SPECS, *HMAC_SPECS)

SIGN_ALGORITHMS = {"RSA": ("RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256"), "EC": ("ECDSA_SHA_256",)}
# Encryption algorithm -> (hash, the OAEP overhead in bytes: 2 * hash length + 2)
ENCRYPT_ALGORITHMS = {"RSAES_OAEP_SHA_256": ("SHA256", 66), "RSAES_OAEP_SHA_1": ("SHA1", 42)}
DIGEST_BYTES = 32  # every signing algorithm here signs a SHA-256 digest


def key_usage_for(key_spec: str, key_usage: str | None) -> str:
    """The usage a new key of ``key_spec`` gets (InvalidParameter when the spec cannot have it)."""
    if key_spec in REFUSED_SPECS:
        raise InvalidParameter("KeySpec", REFUSED_SPECS[key_spec])
    if key_spec in HMAC_SPECS:
        allowed: tuple[str, ...] = (MAC_USAGE,)
    elif key_spec in ASYMMETRIC_SPECS:
        allowed = ASYMMETRIC_SPECS[key_spec]
    elif key_spec in SYMMETRIC_SPECS:
        allowed = (ENCRYPT_DECRYPT,)
    else:
        raise InvalidParameter("KeySpec", f"It must be one of {', '.join(ALL_SPECS)}.")
    if key_usage is None:
        return allowed[0]
    if key_usage not in allowed:
        raise InvalidParameter("KeyUsage", f"A {key_spec} key is for {' or '.join(allowed)}.")
    return key_usage


def is_symmetric(key: KeyRecord) -> bool:
    return key.key_spec in SYMMETRIC_SPECS


def require_symmetric(key: KeyRecord) -> None:
    """Encrypt, GenerateDataKey ... take only symmetric keys."""
    if not is_symmetric(key):
        raise UnsupportedOperation(f"The key is a {key.key_spec} key for {key.key_usage}: this operation needs "
                                   "a symmetric key.")


def decode_base64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidParameter(name, "It must be Base64.") from None


@dataclass(frozen=True, slots=True)
class Used:
    """The key and version an operation used, for the response."""

    key_id: str
    key_version_id: str


class AsymmetricService:
    def __init__(self, keys: KeyService, hsm: HsmBackend):
        self.keys = keys
        self.hsm = hsm
        self._public_keys: dict[str, bytes] = {}  # version id -> DER; public, so kept for the process's life
        self._lock = threading.Lock()

    # --- lookups -------------------------------------------------------------------------------------------

    def _version(self, key: KeyRecord, version_id: str, action: str, usage: str) -> VersionRecord:
        states.check(action, key.state)
        if key.key_usage != usage or key.key_spec not in ASYMMETRIC_SPECS:
            raise UnsupportedOperation(f"{action} needs an asymmetric key for {usage}; this key is a "
                                       f"{key.key_spec} key for {key.key_usage}.")
        try:
            version = self.keys.version(version_id)
        except KeyNotFound:
            raise KeyVersionNotFound() from None
        if version.key_id != key.key_id:
            raise KeyVersionNotFound()
        return version

    def _public_der(self, version_id: str) -> bytes:
        der = self._public_keys.get(version_id)
        if der is None:
            der = self.hsm.public_key(version_id)
            with self._lock:
                self._public_keys[version_id] = der
        return der

    def _public(self, version_id: str):
        return serialization.load_der_public_key(self._public_der(version_id))

    @staticmethod
    def _family(key: KeyRecord) -> str:
        return "RSA" if key.key_spec.startswith("RSA") else "EC"

    def _sign_algorithm(self, key: KeyRecord, algorithm: str) -> str:
        allowed = SIGN_ALGORITHMS[self._family(key)]
        if algorithm not in allowed:
            raise InvalidParameter("Algorithm", f"A {key.key_spec} key signs with {' or '.join(allowed)}.")
        return algorithm

    @staticmethod
    def _digest(digest_b64: str) -> bytes:
        digest = decode_base64(digest_b64, "Digest")
        if len(digest) != DIGEST_BYTES:
            raise InvalidParameter("Digest", "It must be the Base64 of a SHA-256 digest (32 bytes).")
        return digest

    # --- operations ----------------------------------------------------------------------------------------

    def public_key_pem(self, key: KeyRecord, version_id: str) -> tuple[Used, str]:
        states.check("GetPublicKey", key.state)
        if key.key_spec not in ASYMMETRIC_SPECS:
            raise UnsupportedOperation("GetPublicKey needs an asymmetric key.")
        version = self._version(key, version_id, "GetPublicKey", key.key_usage)
        pem = self._public(version.version_id).public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return Used(key.key_id, version.version_id), pem.decode("ascii")

    def sign(self, key: KeyRecord, version_id: str, algorithm: str, digest_b64: str) -> tuple[Used, str]:
        version = self._version(key, version_id, "AsymmetricSign", SIGN_VERIFY)
        signature = self.hsm.sign_digest(version.version_id, self._sign_algorithm(key, algorithm),
                                         self._digest(digest_b64))
        return Used(key.key_id, version.version_id), base64.b64encode(signature).decode("ascii")

    def verify(self, key: KeyRecord, version_id: str, algorithm: str, digest_b64: str,
               signature_b64: str) -> tuple[Used, bool]:
        version = self._version(key, version_id, "AsymmetricVerify", SIGN_VERIFY)
        algorithm = self._sign_algorithm(key, algorithm)
        digest = self._digest(digest_b64)
        signature = decode_base64(signature_b64, "Value")
        public = self._public(version.version_id)
        prehashed = Prehashed(hashes.SHA256())
        try:
            if algorithm == "ECDSA_SHA_256":
                assert isinstance(public, ec.EllipticCurvePublicKey)
                public.verify(signature, digest, ec.ECDSA(prehashed))
            else:
                assert isinstance(public, rsa.RSAPublicKey)
                pad = (padding.PSS(padding.MGF1(hashes.SHA256()), 32) if algorithm == "RSA_PSS_SHA_256"
                       else padding.PKCS1v15())
                public.verify(signature, digest, pad, prehashed)
            valid = True
        except (InvalidSignature, ValueError):
            valid = False
        return Used(key.key_id, version.version_id), valid

    def _oaep(self, key: KeyRecord, algorithm: str) -> tuple[str, int]:
        if algorithm not in ENCRYPT_ALGORITHMS:
            raise InvalidParameter("Algorithm", f"It must be one of {', '.join(ENCRYPT_ALGORITHMS)}.")
        hash_name, overhead = ENCRYPT_ALGORITHMS[algorithm]
        modulus_bytes = int(key.key_spec.removeprefix("RSA_")) // 8
        return hash_name, modulus_bytes - overhead

    def encrypt(self, key: KeyRecord, version_id: str, algorithm: str, plaintext_b64: str) -> tuple[Used, str]:
        version = self._version(key, version_id, "AsymmetricEncrypt", ENCRYPT_DECRYPT)
        hash_name, limit = self._oaep(key, algorithm)
        plaintext = decode_base64(plaintext_b64, "Plaintext")
        if len(plaintext) > limit:
            raise InvalidParameter("Plaintext", f"{algorithm} under a {key.key_spec} key takes at most {limit} bytes.")
        algo = hashes.SHA256() if hash_name == "SHA256" else hashes.SHA1()
        public = self._public(version.version_id)
        assert isinstance(public, rsa.RSAPublicKey)
        ciphertext = public.encrypt(plaintext, padding.OAEP(padding.MGF1(algo), algo, None))
        return Used(key.key_id, version.version_id), base64.b64encode(ciphertext).decode("ascii")

    def decrypt(self, key: KeyRecord, version_id: str, algorithm: str, ciphertext_b64: str) -> tuple[Used, str]:
        version = self._version(key, version_id, "AsymmetricDecrypt", ENCRYPT_DECRYPT)
        hash_name, _ = self._oaep(key, algorithm)
        ciphertext = decode_base64(ciphertext_b64, "CiphertextBlob")
        try:
            plaintext = self.hsm.rsa_oaep_decrypt(version.version_id, hash_name, ciphertext)
        except DecryptionFailed:
            raise InvalidParameter("CiphertextBlob", "It does not decrypt under this key version and "
                                                     "algorithm.") from None
        return Used(key.key_id, version.version_id), base64.b64encode(plaintext).decode("ascii")

    # --- MACs ----------------------------------------------------------------------------------------------

    def _mac(self, key: KeyRecord, action: str, algorithm: str, message_b64: str) -> bytes:
        states.check(action, key.state)
        if key.key_spec not in HMAC_SPECS:
            raise UnsupportedOperation(f"{action} needs an HMAC key; this key is a {key.key_spec} key for "
                                       f"{key.key_usage}.")
        if algorithm not in MAC_ALGORITHMS:
            raise InvalidParameter("Algorithm", f"It must be one of {', '.join(MAC_ALGORITHMS)}.")
        if algorithm != key.key_spec:
            raise InvalidParameter("Algorithm", f"A {key.key_spec} key computes {key.key_spec} only.")
        message = decode_base64(message_b64, "Message")
        return self.hsm.hmac(key.primary_version_id, algorithm, message)

    def generate_mac(self, key: KeyRecord, algorithm: str, message_b64: str) -> str:
        return base64.b64encode(self._mac(key, "GenerateMac", algorithm, message_b64)).decode("ascii")

    def verify_mac(self, key: KeyRecord, algorithm: str, message_b64: str, mac_b64: str) -> bool:
        mac = decode_base64(mac_b64, "Mac")
        expected = self._mac(key, "VerifyMac", algorithm, message_b64)
        return host_hmac.compare_digest(expected, mac)  # constant time: the MAC is the token's, compared here


def sha256_digest_b64(message: bytes) -> str:
    """The Digest parameter for ``message`` (a convenience for the CLI and tests)."""
    return base64.b64encode(hashlib.sha256(message).digest()).decode("ascii")
