"""Refusals through the official SDKs: each one the documented code and HTTP status, never a 5xx."""

from __future__ import annotations

import base64
import uuid

import pytest
from alibabacloud_tea_openapi.utils import Utils as TeaUtils
from aliyunsdkcore.request import CommonRequest
from aliyunsdkcore.utils import parameter_helper

from tests.e2e.conftest import make_sdk
from tests.e2e.sdk import ApiError


def wrong(secret: str) -> str:
    """The same secret with its last character changed."""
    return secret[:-1] + ("x" if secret[-1] != "x" else "y")


def refused(sdk, action: str, **params) -> ApiError:
    with pytest.raises(ApiError) as caught:
        sdk.call(action, **params)
    return caught.value


def test_context_mismatch(sdk, new_key):
    sealed = sdk.call("Encrypt", KeyId=new_key, Plaintext="YQ==", EncryptionContext={"a": "1"})
    for wrong in [{"a": "2"}, {"a": "1", "b": "2"}, {}]:
        err = refused(sdk, "Decrypt", CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext=wrong)
        assert (err.status, err.code) == (400, "InvalidParameter")


def test_tampered_blob(sdk, new_key):
    raw = bytearray(base64.b64decode(sdk.call("Encrypt", KeyId=new_key, Plaintext="YQ==")["CiphertextBlob"]))
    for position in [36, 36 + 12, len(raw) - 1]:  # IV, ciphertext, tag
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        err = refused(sdk, "Decrypt", CiphertextBlob=base64.b64encode(bytes(tampered)).decode())
        assert (err.status, err.code) == (400, "InvalidParameter")
    truncated = base64.b64encode(bytes(raw[:40])).decode()
    assert refused(sdk, "Decrypt", CiphertextBlob=truncated).code == "InvalidParameter"


def test_blob_naming_an_unknown_version(sdk):
    blob = base64.b64encode(str(uuid.uuid4()).encode() + bytes(12 + 20)).decode()
    err = refused(sdk, "Decrypt", CiphertextBlob=blob)
    assert (err.status, err.code) == (404, "Forbidden.KeyNotFound")


@pytest.mark.parametrize("key_ref", [
    str(uuid.uuid4()), "not-a-key", "acs:kms:cn-shanghai:1234567890123456:key/x",
    "acs:kms:cn-hangzhou:999:key/x", "acs:kms:cn-hangzhou", "acs:kms:cn-hangzhou:1234567890123456:secret/x",
])
def test_unknown_key(sdk, key_ref):
    for action, params in [("DescribeKey", {}), ("GenerateDataKey", {}), ("Encrypt", {"Plaintext": "YQ=="})]:
        err = refused(sdk, action, KeyId=key_ref, **params)
        assert (err.status, err.code) == (404, "Forbidden.KeyNotFound")


def test_key_references_longer_than_any_real_one_are_refused(sdk):
    for params in [{"KeyId": "x" * 1025}, {"KeyId": "alias/" + "a" * 1019}]:
        err = refused(sdk, "DescribeKey", **params)
        assert (err.status, err.code) == (400, "InvalidParameter")
        assert "1024" in err.message and "xxxx" not in err.message
    assert refused(sdk, "DescribeKey", KeyId="x" * 1024).code == "Forbidden.KeyNotFound"


def test_unknown_alias(sdk):
    err = refused(sdk, "GenerateDataKey", KeyId="alias/never-made")
    assert (err.status, err.code) == (404, "Forbidden.AliasNotFound")
    err = refused(sdk, "DeleteAlias", AliasName="alias/never-made")
    assert (err.status, err.code) == (404, "Forbidden.AliasNotFound")


def test_alias_already_exists(sdk, new_key):
    alias = f"alias/dup-{uuid.uuid4().hex[:8]}"
    sdk.call("CreateAlias", AliasName=alias, KeyId=new_key)
    err = refused(sdk, "CreateAlias", AliasName=alias, KeyId=new_key)
    assert (err.status, err.code) == (400, "AliasAlreadyExists")


def test_unknown_access_key(server):
    for name in ["tea-v3", "tea-v2", "legacy"]:
        client = make_sdk(name, server, access_key_id="LTAInotanaccesskey00000", secret="whatever")
        err = refused(client, "DescribeKey", KeyId=server.alias)
        assert (err.status, err.code) == (404, "InvalidAccessKeyId.NotFound")


@pytest.mark.parametrize("name", ["tea-v3", "tea-v2"])
def test_bad_signature_tea(server, name):
    client = make_sdk(name, server, secret=wrong(server.access_key_secret))
    err = refused(client, "DescribeKey", KeyId=server.alias)
    assert (err.status, err.code) == (400, "SignatureDoesNotMatch")
    assert ":" in err.message


def test_bad_signature_legacy(server):
    client = make_sdk("legacy", server, secret=wrong(server.access_key_secret))
    err = refused(client, "DescribeKey", KeyId=server.alias)
    # The legacy SDK compares our string to sign (after the ':') with its own and, as they are equal,
    # reports the real cause itself.
    assert (err.status, err.code) == (400, "InvalidAccessKeySecret")


def test_signature_error_does_not_echo_a_plaintext(server, new_key):
    client = make_sdk("legacy", server, secret=wrong(server.access_key_secret))
    err = refused(client, "Encrypt", KeyId=new_key, Plaintext="c3VwZXJzZWNyZXQ=")
    assert (err.status, err.code) == (400, "SignatureDoesNotMatch")
    assert "c3VwZXJzZWNyZXQ" not in err.message


@pytest.mark.parametrize("name", ["tea-v3", "tea-v2", "legacy"])
def test_replayed_nonce(server, name, monkeypatch):
    nonce = uuid.uuid4().hex
    monkeypatch.setattr(TeaUtils, "get_nonce", staticmethod(lambda: nonce))
    monkeypatch.setattr(parameter_helper, "get_uuid", lambda: nonce)
    client = make_sdk(name, server)
    client.call("DescribeKey", KeyId=server.alias)
    err = refused(client, "DescribeKey", KeyId=server.alias)
    assert (err.status, err.code) == (400, "SignatureNonceUsed")
    # The nonce is refused on every worker, whichever answers.
    for _ in range(4):
        assert refused(client, "GenerateDataKey", KeyId=server.alias).code == "SignatureNonceUsed"


@pytest.mark.parametrize("name", ["tea-v3", "tea-v2", "legacy"])
@pytest.mark.parametrize("stamp", ["2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z"])
def test_expired_timestamp(server, name, stamp, monkeypatch):
    monkeypatch.setattr(TeaUtils, "get_timestamp", staticmethod(lambda: stamp))
    monkeypatch.setattr(parameter_helper, "get_iso_8061_date", lambda: stamp)
    err = refused(make_sdk(name, server), "DescribeKey", KeyId=server.alias)
    assert (err.status, err.code) == (400, "InvalidTimeStamp.Expired")


def test_unknown_action_and_version(legacy, server):
    def common(action: str, version: str) -> ApiError:
        request = CommonRequest(domain=server.endpoint, version=version, action_name=action)
        request.set_protocol_type("http")
        request.set_method("POST")
        with pytest.raises(Exception) as caught:
            legacy.client.do_action_with_exception(request)
        return caught.value

    err = common("NoSuchAction", "2016-01-20")
    assert (err.get_http_status(), err.get_error_code()) == (400, "InvalidAction.NotFound")
    err = common("DescribeKey", "2014-05-26")
    assert (err.get_http_status(), err.get_error_code()) == (400, "InvalidVersion")


KEY = "<a key made for the test>"
# (action, parameters, expected code) -- sent by the legacy SDK, which passes strings as given.
BAD_PARAMETERS = [
    ("GenerateDataKey", {"KeyId": KEY, "NumberOfBytes": "0"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "NumberOfBytes": "1025"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "NumberOfBytes": "-1"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "NumberOfBytes": "1.5"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "NumberOfBytes": "ten"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "NumberOfBytes": "99999999999999999999"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "KeySpec": "AES_512"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "KeySpec": "aes_256"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "EncryptionContext": "not json"}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "EncryptionContext": '["a"]'}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "EncryptionContext": '{"a": 1}'}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "EncryptionContext": '{"a": {"b": "c"}}'}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "EncryptionContext": '{"a": "1", "a": "2"}'}, "InvalidParameter"),
    ("GenerateDataKey", {"KeyId": KEY, "EncryptionContext": '{"k": "' + "v" * 8200 + '"}'}, "InvalidParameter"),
    ("Encrypt", {"KeyId": KEY, "Plaintext": "x" * 6145}, "InvalidParameter"),
    ("Encrypt", {}, "MissingParameter"),
    ("Decrypt", {"CiphertextBlob": "!!!not base64!!!"}, "InvalidParameter"),
    ("Decrypt", {"CiphertextBlob": "YWJj"}, "InvalidParameter"),
    ("Decrypt", {}, "MissingParameter"),
    ("CreateKey", {"KeySpec": "RSA_4096"}, "InvalidParameter"),
    ("CreateKey", {"KeySpec": "EC_SM2"}, "InvalidParameter"),
    ("CreateKey", {"KeySpec": "aliyun_aes_256"}, "InvalidParameter"),
    ("CreateKey", {"ProtectionLevel": "hsm"}, "InvalidParameter"),
    ("CreateKey", {"KeyUsage": "SIGN/VERIFY"}, "InvalidParameter"),
    ("CreateKey", {"Origin": "Somewhere"}, "InvalidParameter"),
    ("CreateKey", {"Description": "d" * 8193}, "InvalidParameter"),
    ("CreateAlias", {"KeyId": KEY, "AliasName": "dev"}, "InvalidParameter"),
    ("CreateAlias", {"KeyId": KEY, "AliasName": "alias/"}, "InvalidParameter"),
    ("CreateAlias", {"KeyId": KEY, "AliasName": "alias/acs-reserved"}, "InvalidParameter"),
    ("CreateAlias", {"KeyId": KEY, "AliasName": "alias/has space"}, "InvalidParameter"),
    ("CreateAlias", {"KeyId": KEY, "AliasName": "alias/" + "a" * 256}, "InvalidParameter"),
    ("CreateAlias", {"AliasName": "alias/ok-name"}, "MissingParameter"),  # no KeyId
    ("ListKeys", {"PageSize": "0"}, "InvalidParameter"),
    ("ListKeys", {"PageSize": "101"}, "InvalidParameter"),
    ("ListKeys", {"PageNumber": "0"}, "InvalidParameter"),
    ("ListKeys", {"PageNumber": "x"}, "InvalidParameter"),
    ("ListAliases", {"PageSize": "-5"}, "InvalidParameter"),
    ("DescribeKey", {}, "MissingParameter"),
    ("DeleteAlias", {}, "MissingParameter"),
]


@pytest.mark.parametrize("action, params, code", BAD_PARAMETERS,
                         ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(BAD_PARAMETERS)])
def test_bad_parameter_values(legacy, new_key, action, params, code):
    params = {name: new_key if value == KEY else value for name, value in params.items()}
    err = refused(legacy, action, **params)
    assert (err.status, err.code) == (400, code), err.message


def test_dry_runs_are_refused_not_executed(sdk, new_key):
    before = sdk.call("ListKeys", PageSize=1)["TotalCount"]
    for action, params in [("Encrypt", {"KeyId": new_key, "Plaintext": "YQ=="}),
                           ("GenerateDataKey", {"KeyId": new_key})]:
        err = refused(sdk, action, DryRun="true", **params)
        assert (err.status, err.code) == (400, "InvalidParameter") and "DryRun" in err.message
    assert sdk.call("Encrypt", KeyId=new_key, Plaintext="YQ==", DryRun="false")["KeyId"] == new_key
    assert sdk.call("ListKeys", PageSize=1)["TotalCount"] == before


def test_bad_parameter_values_tea(tea, new_key):
    """The Tea SDK serialises maps itself; its out-of-range numbers and enums get the same answers."""
    for action, params in [
        ("GenerateDataKey", {"KeyId": new_key, "NumberOfBytes": 2048}),
        ("GenerateDataKey", {"KeyId": new_key, "KeySpec": "SM4"}),
        ("GenerateDataKey", {"KeyId": new_key, "EncryptionContext": {"k": "v" * 9000}}),
        ("Encrypt", {"KeyId": new_key, "Plaintext": "y" * 7000}),
        ("CreateKey", {"KeySpec": "EC_SM2"}),
    ]:
        err = refused(tea, action, **params)
        assert (err.status, err.code) == (400, "InvalidParameter")
    err = refused(tea, "GenerateDataKey")
    assert (err.status, err.code) == (400, "MissingParameter")
