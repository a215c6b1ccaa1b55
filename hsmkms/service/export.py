"""Data keys exported under a caller's public key (ExportDataKey, GenerateAndExportDataKey).

The caller hands over an RSA public key; the data key is encrypted to it with RSA-OAEP on the host.  That is
a public-key operation: it needs no secret of the service, and the data key is in the host's memory for
these calls anyway, exactly as for GenerateDataKey, which returns it in the clear.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hsmkms.errors import InvalidParameter

WRAPPING_KEY_SPECS = {"RSA_2048": 2048}
WRAPPING_ALGORITHMS = {"RSAES_OAEP_SHA_256": hashes.SHA256, "RSAES_OAEP_SHA_1": hashes.SHA1}
MAX_PUBLIC_KEY_CHARS = 8192


@dataclass(frozen=True)
class WrappingKey:
    public_key: rsa.RSAPublicKey
    algorithm: str

    def max_plaintext_bytes(self) -> int:
        digest = WRAPPING_ALGORITHMS[self.algorithm]()
        return self.public_key.key_size // 8 - 2 * digest.digest_size - 2

    def wrap(self, data_key: bytes) -> str:
        """The data key encrypted to the caller's key, Base64."""
        if len(data_key) > self.max_plaintext_bytes():
            raise InvalidParameter("NumberOfBytes", f"{self.algorithm} with this key carries at most "
                                                    f"{self.max_plaintext_bytes()} bytes.")
        digest = WRAPPING_ALGORITHMS[self.algorithm]
        sealed = self.public_key.encrypt(data_key, padding.OAEP(padding.MGF1(digest()), digest(), None))
        return base64.b64encode(sealed).decode("ascii")


def wrapping_key(public_key_blob: str, key_spec: str, algorithm: str) -> WrappingKey:
    """Parse ``PublicKeyBlob`` (Base64 DER SubjectPublicKeyInfo, or PEM) for the spec and algorithm named."""
    if key_spec not in WRAPPING_KEY_SPECS:
        raise InvalidParameter("WrappingKeySpec", f"Supported here: {', '.join(sorted(WRAPPING_KEY_SPECS))}.")
    if algorithm not in WRAPPING_ALGORITHMS:
        raise InvalidParameter("WrappingAlgorithm", f"Supported here: {', '.join(sorted(WRAPPING_ALGORITHMS))}.")
    hint = "It must be a Base64 DER (or PEM) RSA public key of the size WrappingKeySpec names."
    if len(public_key_blob) > MAX_PUBLIC_KEY_CHARS:
        raise InvalidParameter("PublicKeyBlob", hint)
    try:
        if public_key_blob.lstrip().startswith("-----BEGIN"):
            public_key = serialization.load_pem_public_key(public_key_blob.encode("ascii"))
        else:
            public_key = serialization.load_der_public_key(base64.b64decode(public_key_blob, validate=True))
    except (ValueError, binascii.Error, UnicodeEncodeError, UnsupportedAlgorithm):
        raise InvalidParameter("PublicKeyBlob", hint) from None
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size != WRAPPING_KEY_SPECS[key_spec]:
        raise InvalidParameter("PublicKeyBlob", hint)
    return WrappingKey(public_key, algorithm)
