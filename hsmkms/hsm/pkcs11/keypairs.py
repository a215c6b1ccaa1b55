"""Asymmetric and HMAC keys in PKCS#11 terms: what each key spec and usage is in the token (templates and the
mechanisms a key may be used with), and the public key read back from public attributes.

Measured on this machine (SoftHSM 2.6.1, NSS softoken 3.87):
- both make RSA 2048/3072 and P-256 key pairs and sign with CKM_RSA_PKCS, CKM_RSA_PKCS_PSS and CKM_ECDSA;
- SoftHSM makes secp256k1 key pairs; NSS refuses the curve (CKR_DOMAIN_PARAMS_INVALID);
- SoftHSM's CKM_RSA_PKCS_OAEP takes SHA-1 only (SHA-256 answers CKR_ARGUMENTS_BAD); NSS takes both;
- both compute CKM_SHA{224,256,384,512}_HMAC; SoftHSM refuses an HMAC key shorter than the hash's output;
- CKM_ECDSA returns r || s, each as long as the curve's order; the API returns DER (as OpenSSL does);
- CKA_EC_POINT is a DER OCTET STRING holding the uncompressed point (a token may also give the bare point).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, KeyType, Mechanism


@dataclass(frozen=True)
class PairSpec:
    key_type: KeyType
    bits: int = 0  # RSA modulus
    curve_oid_der: bytes = b""  # EC: CKA_EC_PARAMS, the named curve's OID in DER
    curve: type[ec.EllipticCurve] | None = None


PAIR_SPECS = {
    "RSA_2048": PairSpec(KeyType.RSA, bits=2048),
    "RSA_3072": PairSpec(KeyType.RSA, bits=3072),
    "EC_P256": PairSpec(KeyType.EC, curve_oid_der=bytes.fromhex("06082a8648ce3d030107"), curve=ec.SECP256R1),
    "EC_P256K": PairSpec(KeyType.EC, curve_oid_der=bytes.fromhex("06052b8104000a"), curve=ec.SECP256K1),
}

EC_COORDINATE_BYTES = 32  # both curves are 256-bit

# Signing algorithm -> (mechanism, its parameter, what to put before the digest)
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")  # DER DigestInfo prefix, RFC 8017
SIGNING = {
    "RSA_PSS_SHA_256": (Mechanism.RSA_PKCS_PSS, (Mechanism.SHA256, MGF.SHA256, 32), b""),
    "RSA_PKCS1_SHA_256": (Mechanism.RSA_PKCS, None, SHA256_DIGEST_INFO),
    "ECDSA_SHA_256": (Mechanism.ECDSA, None, b""),
}
OAEP_PARAMS = {"SHA1": (Mechanism.SHA_1, MGF.SHA1, None), "SHA256": (Mechanism.SHA256, MGF.SHA256, None)}
HMAC_MECHANISMS = {
    "HMAC_SHA_224": (Mechanism.SHA224_HMAC, 28),
    "HMAC_SHA_256": (Mechanism.SHA256_HMAC, 32),
    "HMAC_SHA_384": (Mechanism.SHA384_HMAC, 48),
    "HMAC_SHA_512": (Mechanism.SHA512_HMAC, 64),
}


def allowed_mechanisms(key_spec: str, usage: str, raw_rsa: bool) -> list[Mechanism]:
    """The only mechanisms a private key of this spec and usage may be used with.  ``raw_rsa``: the token's
    profile decodes OAEP on the host, so the decryption key needs CKM_RSA_X_509 (the raw operation)."""
    if PAIR_SPECS[key_spec].key_type == KeyType.EC:
        return [Mechanism.ECDSA]
    if usage == "SIGN/VERIFY":
        return [Mechanism.RSA_PKCS, Mechanism.RSA_PKCS_PSS]
    return [Mechanism.RSA_PKCS_OAEP] + ([Mechanism.RSA_X_509] if raw_rsa else [])


def kept_in_token(cka_id: bytes, label: str) -> dict:
    """What every secret hsmkms makes is: a private token object, sensitive, never extractable, never modified."""
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: False,
        Attribute.ID: cka_id,
        Attribute.LABEL: label,
    }


def pair_templates(cka_id: bytes, label: str, key_spec: str, usage: str,
                   allowed: list[Mechanism] | None) -> tuple[dict, dict]:
    """(public, private) templates.  The private key signs or decrypts, never both, and never leaves."""
    spec = PAIR_SPECS[key_spec]
    signs = usage == "SIGN/VERIFY"
    public = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.MODIFIABLE: False,
        Attribute.VERIFY: signs,
        Attribute.ENCRYPT: not signs,
        Attribute.WRAP: False,
        Attribute.ID: cka_id,
        Attribute.LABEL: label,
    }
    if spec.key_type == KeyType.RSA:
        public[Attribute.MODULUS_BITS] = spec.bits
        public[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
    else:
        public[Attribute.EC_PARAMS] = spec.curve_oid_der
    private = {
        **kept_in_token(cka_id, label),
        Attribute.SIGN: signs,
        Attribute.DECRYPT: not signs,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    if allowed is not None:
        private[Attribute.ALLOWED_MECHANISMS] = allowed
    return public, private


def hmac_template(cka_id: bytes, label: str, algorithm: str, restrict: bool) -> dict:
    mechanism, _ = HMAC_MECHANISMS[algorithm]
    template = {
        **kept_in_token(cka_id, label),
        Attribute.SIGN: True,
        Attribute.VERIFY: True,
        Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    if restrict:
        template[Attribute.ALLOWED_MECHANISMS] = [mechanism]
    return template


def public_key_der(public_key) -> bytes:
    """DER SubjectPublicKeyInfo of a python-pkcs11 public key object (its public attributes only)."""
    if public_key.key_type == KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(int.from_bytes(public_key[Attribute.PUBLIC_EXPONENT], "big"),
                                       int.from_bytes(public_key[Attribute.MODULUS], "big"))
        key = numbers.public_key()
    else:
        params = bytes(public_key[Attribute.EC_PARAMS])
        curve = next(spec.curve for spec in PAIR_SPECS.values() if spec.curve_oid_der == params)
        point = bytes(public_key[Attribute.EC_POINT])
        if len(point) != 1 + 2 * EC_COORDINATE_BYTES:
            point = point[2:]  # the DER OCTET STRING (04 41) around the uncompressed point 0x04 || x || y
        key = ec.EllipticCurvePublicKey.from_encoded_point(curve(), point)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ecdsa_der(raw: bytes) -> bytes:
    """PKCS#11's r || s as the DER SEQUENCE { r, s } that OpenSSL and the API use."""
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
