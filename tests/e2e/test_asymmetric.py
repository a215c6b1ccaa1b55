"""Asymmetric keys and HMAC keys through the official SDKs, against a live server on each test token:
signatures that cryptography and openssl verify, ciphertexts made elsewhere that decrypt here, MACs, versions,
the state gate, and the documented refusals (a token that lacks a key spec included)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from tests.conftest import TOKENS
from tests.e2e.conftest import make_sdk
from tests.e2e.sdk import ApiError

# The legacy SDK has the asymmetric actions but not GenerateMac/VerifyMac.
ASYMMETRIC_SDKS = ["tea-v3", "legacy"]
KEYS = {  # name -> CreateKey parameters
    "rsa_sign": {"KeySpec": "RSA_2048", "KeyUsage": "SIGN/VERIFY"},
    "rsa_encrypt": {"KeySpec": "RSA_2048"},  # ENCRYPT/DECRYPT by default
    "rsa3072_encrypt": {"KeySpec": "RSA_3072", "KeyUsage": "ENCRYPT/DECRYPT"},
    "ec": {"KeySpec": "EC_P256", "KeyUsage": "SIGN/VERIFY"},
    "ec_k1": {"KeySpec": "EC_P256K"},  # SIGN/VERIFY by default
    "hmac": {"KeySpec": "HMAC_SHA_256", "KeyUsage": "GENERATE/VERIFY_MAC"},
    "aes": {},
}


def token_has(token: str, key_name: str) -> bool:
    """NSS softoken has no secp256k1; everything else is on both test tokens."""
    return not (token == "nss" and key_name == "ec_k1")


@pytest.fixture(scope="module", params=TOKENS)
def server(request, live_servers):
    live = live_servers(request.param)
    live.token = request.param
    return live


@pytest.fixture(scope="module")
def keys(server) -> dict[str, dict]:
    """One key of each kind on this token: name -> {"KeyId", "KeyVersionId"}."""
    tea = make_sdk("tea-v3", server)
    made = {}
    for name, params in KEYS.items():
        if token_has(server.token, name):
            meta = tea.call("CreateKey", Description=f"e2e {name}", **params)["KeyMetadata"]
            made[name] = {"KeyId": meta["KeyId"], "KeyVersionId": meta["PrimaryKeyVersion"]}
    return made


def public_key(sdk, key: dict):
    pem = sdk.call("GetPublicKey", **key)["PublicKey"]
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n") and pem.endswith("-----END PUBLIC KEY-----\n")
    return serialization.load_pem_public_key(pem.encode())


def digest_of(message: bytes) -> str:
    return base64.b64encode(hashlib.sha256(message).digest()).decode()


SIGNINGS = [("rsa_sign", "RSA_PSS_SHA_256"), ("rsa_sign", "RSA_PKCS1_SHA_256"), ("ec", "ECDSA_SHA_256"),
            ("ec_k1", "ECDSA_SHA_256")]


def verify_locally(public, algorithm: str, signature: bytes, message: bytes) -> None:
    """cryptography's own verification (raises InvalidSignature)."""
    if algorithm == "ECDSA_SHA_256":
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    elif algorithm == "RSA_PSS_SHA_256":
        public.verify(signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    else:
        public.verify(signature, hashlib.sha256(message).digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))


@pytest.mark.parametrize("sdk_name", ASYMMETRIC_SDKS)
@pytest.mark.parametrize(("key_name", "algorithm"), SIGNINGS)
def test_sign_then_verify_here_and_with_cryptography(server, keys, sdk_name, key_name, algorithm):
    if not token_has(server.token, key_name):
        return  # test_a_key_spec_the_token_lacks_is_refused covers it
    sdk, key = make_sdk(sdk_name, server), keys[key_name]
    message = os.urandom(100)
    signed = sdk.call("AsymmetricSign", **key, Algorithm=algorithm, Digest=digest_of(message))
    assert (signed["KeyId"], signed["KeyVersionId"]) == (key["KeyId"], key["KeyVersionId"])
    signature = base64.b64decode(signed["Value"])
    verify_locally(public_key(sdk, key), algorithm, signature, message)
    verified = sdk.call("AsymmetricVerify", **key, Algorithm=algorithm, Digest=digest_of(message),
                        Value=signed["Value"])
    assert verified["Value"] is True
    other = sdk.call("AsymmetricVerify", **key, Algorithm=algorithm, Digest=digest_of(message + b"!"),
                     Value=signed["Value"])
    assert other["Value"] is False


@pytest.mark.parametrize(("key_name", "algorithm"), [("ec", "ECDSA_SHA_256"), ("rsa_sign", "RSA_PSS_SHA_256")])
def test_openssl_verifies_a_signature(server, keys, tmp_path, key_name, algorithm):
    tea, key = make_sdk("tea-v3", server), keys[key_name]
    message = b"release 1.2.3\n"
    (tmp_path / "message").write_bytes(message)
    (tmp_path / "public.pem").write_text(tea.call("GetPublicKey", **key)["PublicKey"])
    signed = tea.call("AsymmetricSign", **key, Algorithm=algorithm, Digest=digest_of(message))
    (tmp_path / "signature").write_bytes(base64.b64decode(signed["Value"]))
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"] if "PSS" in algorithm else []
    result = subprocess.run(["openssl", "dgst", "-sha256", "-verify", "public.pem", *pss, "-signature", "signature",
                             "message"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "Verified OK" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("sdk_name", ASYMMETRIC_SDKS)
@pytest.mark.parametrize(("key_name", "algorithm", "limit"), [
    ("rsa_encrypt", "RSAES_OAEP_SHA_256", 190), ("rsa_encrypt", "RSAES_OAEP_SHA_1", 214),
    ("rsa3072_encrypt", "RSAES_OAEP_SHA_256", 318),
])
def test_encrypt_elsewhere_decrypt_here_and_back(server, keys, sdk_name, key_name, algorithm, limit):
    sdk, key = make_sdk(sdk_name, server), keys[key_name]
    hash_algorithm = hashes.SHA256() if algorithm.endswith("256") else hashes.SHA1()
    secret = os.urandom(limit)
    ciphertext = public_key(sdk, key).encrypt(secret, padding.OAEP(padding.MGF1(hash_algorithm), hash_algorithm,
                                                                   None))
    opened = sdk.call("AsymmetricDecrypt", **key, Algorithm=algorithm,
                      CiphertextBlob=base64.b64encode(ciphertext).decode())
    assert base64.b64decode(opened["Plaintext"]) == secret and opened["KeyVersionId"] == key["KeyVersionId"]
    sealed = sdk.call("AsymmetricEncrypt", **key, Algorithm=algorithm, Plaintext=base64.b64encode(secret).decode())
    again = sdk.call("AsymmetricDecrypt", **key, Algorithm=algorithm, CiphertextBlob=sealed["CiphertextBlob"])
    assert base64.b64decode(again["Plaintext"]) == secret
    with pytest.raises(ApiError) as too_long:
        sdk.call("AsymmetricEncrypt", **key, Algorithm=algorithm, Plaintext=base64.b64encode(secret + b"x").decode())
    assert too_long.value.code == "InvalidParameter"


def test_mac_generate_then_verify(server, keys):
    tea, key_id = make_sdk("tea-v3", server), keys["hmac"]["KeyId"]
    message = base64.b64encode(b"token payload").decode()
    made = tea.call("GenerateMac", KeyId=key_id, Algorithm="HMAC_SHA_256", Message=message)
    assert (made["KeyId"], made["Algorithm"]) == (key_id, "HMAC_SHA_256")
    assert len(base64.b64decode(made["Mac"])) == 32
    assert tea.call("GenerateMac", KeyId=key_id, Algorithm="HMAC_SHA_256", Message=message)["Mac"] == made["Mac"]
    verified = tea.call("VerifyMac", KeyId=key_id, Algorithm="HMAC_SHA_256", Message=message, Mac=made["Mac"])
    assert verified["Value"] is True and verified["KeyId"] == key_id
    tampered = base64.b64encode(b"token payloaD").decode()
    assert tea.call("VerifyMac", KeyId=key_id, Algorithm="HMAC_SHA_256", Message=tampered, Mac=made["Mac"])["Value"] \
        is False


def test_a_new_version_is_a_new_key_pair_and_the_old_one_still_verifies(server, keys):
    tea = make_sdk("tea-v3", server)
    key_id = tea.call("CreateKey", KeySpec="EC_P256", KeyUsage="SIGN/VERIFY")["KeyMetadata"]["KeyId"]
    first = tea.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["PrimaryKeyVersion"]
    digest = digest_of(b"m")
    signed = tea.call("AsymmetricSign", KeyId=key_id, KeyVersionId=first, Algorithm="ECDSA_SHA_256", Digest=digest)
    second = tea.call("CreateKeyVersion", KeyId=key_id)["KeyVersion"]["KeyVersionId"]
    assert second != first
    first_pem = tea.call("GetPublicKey", KeyId=key_id, KeyVersionId=first)["PublicKey"]
    assert tea.call("GetPublicKey", KeyId=key_id, KeyVersionId=second)["PublicKey"] != first_pem
    for version, valid in ((first, True), (second, False)):
        assert tea.call("AsymmetricVerify", KeyId=key_id, KeyVersionId=version, Algorithm="ECDSA_SHA_256",
                        Digest=digest, Value=signed["Value"])["Value"] is valid
    with pytest.raises(ApiError) as other:  # a version of another key
        tea.call("GetPublicKey", KeyId=key_id, KeyVersionId=keys["ec"]["KeyVersionId"])
    assert (other.value.status, other.value.code) == (404, "Forbidden.KeyVersionNotFound")


def test_a_disabled_key_is_refused(server, keys):
    tea = make_sdk("tea-v3", server)
    key_id = tea.call("CreateKey", KeySpec="RSA_2048", KeyUsage="SIGN/VERIFY")["KeyMetadata"]["KeyId"]
    version = tea.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["PrimaryKeyVersion"]
    mac_key = tea.call("CreateKey", KeySpec="HMAC_SHA_256", KeyUsage="GENERATE/VERIFY_MAC")["KeyMetadata"]["KeyId"]
    for disabled in (key_id, mac_key):
        tea.call("DisableKey", KeyId=disabled)
    calls = [
        ("AsymmetricSign", {"KeyId": key_id, "KeyVersionId": version, "Algorithm": "RSA_PSS_SHA_256",
                            "Digest": digest_of(b"m")}),
        ("GetPublicKey", {"KeyId": key_id, "KeyVersionId": version}),
        ("GenerateMac", {"KeyId": mac_key, "Algorithm": "HMAC_SHA_256", "Message": "bQ=="}),
    ]
    for action, params in calls:
        with pytest.raises(ApiError) as refused:
            tea.call(action, **params)
        assert (refused.value.status, refused.value.code) == (409, "Rejected.Disabled"), action


def refusals(keys: dict) -> list[tuple[str, dict, str]]:
    rsa_sign, rsa_encrypt, ec_key, hmac_key, aes = (keys[name] for name in ("rsa_sign", "rsa_encrypt", "ec", "hmac",
                                                                            "aes"))
    digest = digest_of(b"m")
    return [
        # symmetric operations on other keys, and the reverse
        ("Encrypt", {"KeyId": rsa_encrypt["KeyId"], "Plaintext": "aGk="}, "Rejected.UnsupportedOperation"),
        ("GenerateDataKey", {"KeyId": ec_key["KeyId"]}, "Rejected.UnsupportedOperation"),
        ("GenerateDataKey", {"KeyId": hmac_key["KeyId"]}, "Rejected.UnsupportedOperation"),
        ("AsymmetricSign", {**aes, "Algorithm": "RSA_PSS_SHA_256", "Digest": digest}, "Rejected.UnsupportedOperation"),
        ("AsymmetricSign", {**rsa_encrypt, "Algorithm": "RSA_PSS_SHA_256", "Digest": digest},
         "Rejected.UnsupportedOperation"),
        ("AsymmetricDecrypt", {**rsa_sign, "Algorithm": "RSAES_OAEP_SHA_256", "CiphertextBlob": "AA=="},
         "Rejected.UnsupportedOperation"),
        ("GenerateMac", {"KeyId": rsa_sign["KeyId"], "Algorithm": "HMAC_SHA_256", "Message": "bQ=="},
         "Rejected.UnsupportedOperation"),
        ("GetPublicKey", {"KeyId": hmac_key["KeyId"], "KeyVersionId": hmac_key["KeyVersionId"]},
         "Rejected.UnsupportedOperation"),
        ("UpdateRotationPolicy", {"KeyId": rsa_sign["KeyId"], "EnableAutomaticRotation": True,
                                  "RotationInterval": "30d"}, "Rejected.UnsupportedOperation"),
        ("CreateKeyVersion", {"KeyId": hmac_key["KeyId"]}, "Rejected.UnsupportedOperation"),
        # parameters
        ("AsymmetricSign", {"KeyId": ec_key["KeyId"], "Algorithm": "ECDSA_SHA_256", "Digest": digest},
         "MissingParameter"),
        ("AsymmetricSign", {**ec_key, "Algorithm": "RSA_PSS_SHA_256", "Digest": digest}, "InvalidParameter"),
        ("AsymmetricSign", {**ec_key, "Algorithm": "ECDSA_SHA_256", "Digest": "bQ=="}, "InvalidParameter"),
        ("AsymmetricVerify", {**ec_key, "Algorithm": "ECDSA_SHA_256", "Digest": digest, "Value": "not base64!"},
         "InvalidParameter"),
        ("AsymmetricEncrypt", {**rsa_encrypt, "Algorithm": "SM2PKE", "Plaintext": "aGk="}, "InvalidParameter"),
        ("AsymmetricDecrypt", {**rsa_encrypt, "Algorithm": "RSAES_OAEP_SHA_256",
                               "CiphertextBlob": base64.b64encode(os.urandom(256)).decode()}, "InvalidParameter"),
        ("AsymmetricDecrypt", {**rsa_encrypt, "Algorithm": "RSAES_OAEP_SHA_256", "CiphertextBlob": "AAEC"},
         "InvalidParameter"),
        ("GenerateMac", {"KeyId": hmac_key["KeyId"], "Algorithm": "HMAC_SHA_512", "Message": "bQ=="},
         "InvalidParameter"),
        ("VerifyMac", {"KeyId": hmac_key["KeyId"], "Algorithm": "HMAC_SHA_256", "Message": "bQ==", "Mac": "%%"},
         "InvalidParameter"),
        # a made-up symmetric blob naming a key pair's version
        ("Decrypt", {"CiphertextBlob": base64.b64encode(rsa_encrypt["KeyVersionId"].encode() + bytes(40)).decode()},
         "InvalidParameter"),
        # key specs and usages
        ("CreateKey", {"KeySpec": "EC_SM2"}, "InvalidParameter"),
        ("CreateKey", {"KeySpec": "Aliyun_SM4"}, "InvalidParameter"),
        ("CreateKey", {"KeySpec": "HMAC_SM3"}, "InvalidParameter"),
        ("CreateKey", {"KeySpec": "EC_P256", "KeyUsage": "ENCRYPT/DECRYPT"}, "InvalidParameter"),
        ("CreateKey", {"KeySpec": "RSA_2048", "KeyUsage": "GENERATE/VERIFY_MAC"}, "InvalidParameter"),
        ("CreateKey", {"KeySpec": "RSA_4096"}, "InvalidParameter"),
        ("CreateKey", {"KeySpec": "RSA_2048", "EnableAutomaticRotation": True, "RotationInterval": "30d"},
         "InvalidParameter"),
    ]


def test_documented_refusals(server, keys):
    tea = make_sdk("tea-v3", server)
    failures = []
    for action, params, code in refusals(keys):
        try:
            tea.call(action, **params)
            failures.append(f"{action} {params}: accepted")
        except ApiError as exc:
            if (exc.code, exc.status) != (code, 400):  # every one of these codes is a 400
                failures.append(f"{action} {params}: {exc.status} {exc.code}, expected {code}")
    assert not failures, "\n".join(failures)


def test_a_key_spec_the_token_lacks_is_refused(server):
    tea = make_sdk("tea-v3", server)
    if token_has(server.token, "ec_k1"):
        meta = tea.call("CreateKey", KeySpec="EC_P256K")["KeyMetadata"]
        assert (meta["KeySpec"], meta["KeyUsage"]) == ("EC_P256K", "SIGN/VERIFY")
        return
    with pytest.raises(ApiError) as refused:
        tea.call("CreateKey", KeySpec="EC_P256K")
    assert (refused.value.status, refused.value.code) == (400, "InvalidParameter")
    assert "does not support EC_P256K" in refused.value.message
