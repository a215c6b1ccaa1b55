"""Every action of the foundation, round trip, through each official SDK and signature scheme, against a live
server on each test token (SoftHSM and NSS softoken)."""

from __future__ import annotations

import base64
import json
import re
import uuid
import xml.etree.ElementTree as ET

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.conftest import TOKENS
from tests.e2e.conftest import make_sdk

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
ARN_PREFIX = "acs:kms:cn-hangzhou:1234567890123456:"


@pytest.fixture(params=TOKENS)
def server(request, live_servers):
    """This module's tests run against the live server of every test token."""
    return live_servers(request.param)


def test_create_and_describe_key(sdk):
    created = sdk.call("CreateKey", Description="made by " + sdk.name)
    meta = created["KeyMetadata"]
    assert UUID.match(meta["KeyId"]) and UUID.match(meta["PrimaryKeyVersion"])
    assert meta["Arn"] == ARN_PREFIX + "key/" + meta["KeyId"]
    assert meta["KeyState"] == "Enabled"
    assert meta["KeySpec"] == "Aliyun_AES_256"
    assert meta["KeyUsage"] == "ENCRYPT/DECRYPT"
    assert meta["Origin"] == "Aliyun_KMS"
    assert meta["ProtectionLevel"] == "HSM"
    assert meta["Description"] == "made by " + sdk.name
    assert meta["Creator"] == "1234567890123456"
    assert DATE.match(meta["CreationDate"])
    assert meta["DeleteDate"] == "" and meta["AutomaticRotation"] == "Disabled"
    described = sdk.call("DescribeKey", KeyId=meta["KeyId"])["KeyMetadata"]
    assert {name: described[name] for name in meta} == meta
    assert described["DeletionProtection"] == "Disabled" and described["DeletionProtectionDescription"] == ""


def test_protection_level_asked_for_is_echoed(sdk):
    meta = sdk.call("CreateKey", ProtectionLevel="SOFTWARE")["KeyMetadata"]
    assert meta["ProtectionLevel"] == "SOFTWARE"
    assert sdk.call("DescribeKey", KeyId=meta["KeyId"])["KeyMetadata"]["ProtectionLevel"] == "SOFTWARE"


def test_generate_data_key_then_decrypt(sdk, server):
    body = sdk.call("GenerateDataKey", KeyId=server.alias, EncryptionContext={"purpose": "e2e", "sdk": sdk.name})
    assert len(base64.b64decode(body["Plaintext"])) == 32
    assert UUID.match(body["KeyId"]) and UUID.match(body["KeyVersionId"])
    opened = sdk.call("Decrypt", CiphertextBlob=body["CiphertextBlob"],
                      EncryptionContext={"sdk": sdk.name, "purpose": "e2e"})
    assert opened["Plaintext"] == body["Plaintext"]
    assert (opened["KeyId"], opened["KeyVersionId"]) == (body["KeyId"], body["KeyVersionId"])


def test_generate_data_key_without_plaintext_then_decrypt(sdk, new_key):
    body = sdk.call("GenerateDataKeyWithoutPlaintext", KeyId=new_key, KeySpec="AES_128")
    assert "Plaintext" not in body and body["KeyId"] == new_key
    opened = sdk.call("Decrypt", CiphertextBlob=body["CiphertextBlob"])
    assert len(base64.b64decode(opened["Plaintext"])) == 16


@pytest.mark.parametrize(
    "params, length",
    [({}, 32), ({"KeySpec": "AES_256"}, 32), ({"KeySpec": "AES_128"}, 16), ({"NumberOfBytes": 1}, 1),
     ({"NumberOfBytes": 1024}, 1024), ({"NumberOfBytes": 7, "KeySpec": "AES_256"}, 7)],
)
def test_data_key_length(sdk, server, params, length):
    body = sdk.call("GenerateDataKey", KeyId=server.alias, **params)
    assert len(base64.b64decode(body["Plaintext"])) == length


def test_encrypt_then_decrypt_returns_the_exact_string(sdk, new_key):
    for plaintext in ["aGVsbG8gd29ybGQ=", "not base64 at all: ü€ & = + %", "x" * 6144]:
        sealed = sdk.call("Encrypt", KeyId=new_key, Plaintext=plaintext, EncryptionContext={"k": "v"})
        assert sealed["KeyId"] == new_key and UUID.match(sealed["KeyVersionId"])
        assert sdk.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext={"k": "v"})[
            "Plaintext"] == plaintext


def test_blob_names_the_key_version(sdk, new_key):
    sealed = sdk.call("Encrypt", KeyId=new_key, Plaintext="YQ==")
    raw = base64.b64decode(sealed["CiphertextBlob"])
    assert raw[:36].decode() == sealed["KeyVersionId"]
    assert len(raw) == 36 + 12 + len("YQ==") + 16


def test_key_id_forms(sdk, tea, new_key):
    alias = f"alias/forms-{uuid.uuid4().hex[:8]}"
    tea.call("CreateAlias", AliasName=alias, KeyId=new_key)
    forms = [new_key, alias, ARN_PREFIX + "key/" + new_key, ARN_PREFIX + alias]
    for key_ref in forms:
        assert sdk.call("DescribeKey", KeyId=key_ref)["KeyMetadata"]["KeyId"] == new_key
        assert sdk.call("Encrypt", KeyId=key_ref, Plaintext="YQ==")["KeyId"] == new_key


def test_context_is_compared_as_a_map_across_sdks(server, new_key):
    tea, legacy = make_sdk("tea-v3", server), make_sdk("legacy", server)
    sealed = tea.call("Encrypt", KeyId=new_key, Plaintext="c2VjcmV0", EncryptionContext={"a": "1", "b": "2"})
    # The legacy SDK passes the string as given: spaces and another key order.
    opened = legacy.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext='{"b": "2", "a": "1"}')
    assert opened["Plaintext"] == "c2VjcmV0"


def test_empty_context_equals_absent_context(sdk, new_key):
    sealed = sdk.call("Encrypt", KeyId=new_key, Plaintext="YQ==", EncryptionContext={})
    assert sdk.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"])["Plaintext"] == "YQ=="
    sealed = sdk.call("Encrypt", KeyId=new_key, Plaintext="YQ==")
    assert sdk.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"], EncryptionContext={})["Plaintext"] == "YQ=="


def test_aliases(sdk, new_key):
    alias = f"alias/e2e-{sdk.name}-{uuid.uuid4().hex[:8]}"
    sdk.call("CreateAlias", AliasName=alias, KeyId=new_key)
    listed = sdk.call("ListAliases", PageSize=100)
    entries = {a["AliasName"]: a for a in listed["Aliases"]["Alias"]}
    assert entries[alias] == {"AliasName": alias, "KeyId": new_key,
                              "AliasArn": ARN_PREFIX + alias}
    assert isinstance(listed["TotalCount"], int) and listed["TotalCount"] >= 1
    assert sdk.call("GenerateDataKey", KeyId=alias)["KeyId"] == new_key
    sdk.call("DeleteAlias", AliasName=alias)
    names = {a["AliasName"] for a in sdk.call("ListAliases", PageSize=100)["Aliases"]["Alias"]}
    assert alias not in names
    # Deleting an alias never affects the key.
    assert sdk.call("DescribeKey", KeyId=new_key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_list_keys_pages(sdk, tea):
    created = {tea.call("CreateKey")["KeyMetadata"]["KeyId"] for _ in range(3)}
    first = sdk.call("ListKeys", PageSize=2, PageNumber=1)
    assert (first["PageNumber"], first["PageSize"]) == (1, 2)
    assert isinstance(first["TotalCount"], int) and first["TotalCount"] >= 3
    assert len(first["Keys"]["Key"]) == 2
    seen = set()
    pages = (first["TotalCount"] + 99) // 100
    for number in range(1, pages + 1):
        page = sdk.call("ListKeys", PageSize=100, PageNumber=number)
        for entry in page["Keys"]["Key"]:
            assert entry["KeyArn"] == ARN_PREFIX + "key/" + entry["KeyId"]
            seen.add(entry["KeyId"])
    assert created <= seen


def test_xml_format(legacy, server):
    request = legacy.request("DescribeKey", KeyId=server.alias)
    request.set_accept_format("XML")
    status, headers, body = legacy.client.get_response(request)
    assert status == 200
    root = ET.fromstring(body)
    assert root.tag == "DescribeKeyResponse"
    assert UUID.match(root.findtext("RequestId"))
    assert root.findtext("KeyMetadata/KeyState") == "Enabled"


def test_json_content_type_and_request_id(legacy, server):
    request = legacy.request("DescribeKey", KeyId=server.alias)
    status, headers, body = legacy.client.get_response(request)
    assert status == 200
    assert headers["Content-Type"] == "application/json;charset=utf-8"
    assert UUID.match(json.loads(body)["RequestId"])


def test_random_password_with_every_option(sdk):
    assert len(sdk.call("GetRandomPassword")["RandomPassword"]) == 32
    password = sdk.call("GetRandomPassword", PasswordLength="64", ExcludeLowercase="true", ExcludeUppercase="true",
                        ExcludePunctuation="true", ExcludeCharacters="13579")["RandomPassword"]
    assert len(password) == 64 and set(password) <= set("02468")
    required = sdk.call("GetRandomPassword", PasswordLength="8", RequireEachIncludedType="true",
                        ExcludeNumbers="false")["RandomPassword"]
    assert len(required) == 8
    assert all(any(check(ch) for ch in required) for check in (str.islower, str.isupper, str.isdigit))
    with pytest.raises(Exception) as caught:
        sdk.call("GetRandomPassword", PasswordLength="7")
    assert caught.value.code == "InvalidParameter"


def test_regions_and_account_status(sdk):
    assert sdk.call("DescribeRegions")["Regions"] == {"Region": [{"RegionId": "cn-hangzhou"}]}
    assert sdk.call("DescribeAccountKmsStatus")["AccountStatus"] == "Enabled"


@pytest.fixture(scope="module")
def recipient():
    """The caller's own RSA-2048 key pair, as another crypto module would hold it."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_blob(private_key) -> str:
    der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def open_exported(private_key, exported: str, algorithm: str) -> bytes:
    digest = hashes.SHA256() if algorithm == "RSAES_OAEP_SHA_256" else hashes.SHA1()
    return private_key.decrypt(base64.b64decode(exported), padding.OAEP(padding.MGF1(digest), digest, None))


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"])
def test_export_data_keys_to_a_public_key(sdk, new_key, recipient, algorithm):
    wrapping = {"PublicKeyBlob": public_key_blob(recipient), "WrappingKeySpec": "RSA_2048",
                "WrappingAlgorithm": algorithm}
    context = {"app": "export"}
    made = sdk.call("GenerateAndExportDataKey", KeyId=new_key, EncryptionContext=context, **wrapping)
    assert made["KeyId"] == new_key and UUID.match(made["KeyVersionId"])
    plaintext = sdk.call("Decrypt", CiphertextBlob=made["CiphertextBlob"], EncryptionContext=context)["Plaintext"]
    assert open_exported(recipient, made["ExportedDataKey"], algorithm) == base64.b64decode(plaintext)
    assert len(base64.b64decode(plaintext)) == 32

    data_key = sdk.call("GenerateDataKey", KeyId=new_key, NumberOfBytes=16, EncryptionContext=context)
    exported = sdk.call("ExportDataKey", CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext=context,
                        **wrapping)
    assert exported["KeyId"] == new_key and exported["KeyVersionId"] == data_key["KeyVersionId"]
    assert open_exported(recipient, exported["ExportedDataKey"], algorithm) == base64.b64decode(data_key["Plaintext"])

    for bad, param in [({"WrappingKeySpec": "EC_SM2"}, "WrappingKeySpec"),
                       ({"WrappingAlgorithm": "SM2PKE"}, "WrappingAlgorithm"),
                       ({"PublicKeyBlob": "bm90IGEga2V5"}, "PublicKeyBlob")]:
        with pytest.raises(Exception) as caught:
            sdk.call("ExportDataKey", CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext=context,
                     **{**wrapping, **bad})
        assert (caught.value.status, caught.value.code) == (400, "InvalidParameter"), bad
        assert param in caught.value.message
    with pytest.raises(Exception) as caught:  # the context binds the export as it binds Decrypt
        sdk.call("ExportDataKey", CiphertextBlob=data_key["CiphertextBlob"], **wrapping)
    assert caught.value.code == "InvalidParameter"
    with pytest.raises(Exception) as caught:  # more than OAEP can carry under a 2048-bit key
        sdk.call("GenerateAndExportDataKey", KeyId=new_key, NumberOfBytes=1024, **wrapping)
    assert caught.value.code == "InvalidParameter" and "NumberOfBytes" in caught.value.message
