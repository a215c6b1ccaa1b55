"""Access control through the official SDKs: access keys managed from the CLI, policies, refusals, STS,
the audit trail, secrets at rest, and TLS for the legacy SDK that only speaks HTTPS."""

from __future__ import annotations

import base64
import json
import re
import ssl
import uuid

import pytest
from alibabacloud_kms20160120 import models as tea_models
from alibabacloud_kms20160120.client import Client as TeaClient
from alibabacloud_tea_openapi.models import Config
from aliyunsdkcore.auth.credentials import StsTokenCredential
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.endpoint.default_endpoint_resolver import DefaultEndpointResolver
from aliyunsdkcore.endpoint.user_customized_endpoint_resolver import UserCustomizedEndpointResolver
from aliyunsdkkms.request.v20160120.DecryptRequest import DecryptRequest
from aliyunsdkkms.request.v20160120.GenerateDataKeyRequest import GenerateDataKeyRequest
from darabonba.exceptions import ResponseException
from darabonba.runtime import RuntimeOptions

from tests.e2e.conftest import SDK_NAMES, make_sdk
from tests.e2e.sdk import ApiError
from tests.e2e.server import provision_server

ARN = "acs:kms:cn-hangzhou:1234567890123456"
PIN = "e2e-pin-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server whose PIN comes from the environment, so that no file holds it."""
    server = provision_server(tmp_path_factory.mktemp("access"), workers=2, pin=PIN)
    server.start()
    yield server
    assert server.stop() == 0, server.log()


def refused(client, action: str, **params) -> ApiError:
    with pytest.raises(ApiError) as caught:
        client.call(action, **params)
    return caught.value


def new_access_key(live, policy: dict | None = None) -> tuple[str, str]:
    args = ["access-key", "create", "--description", "test"]
    stdin = None
    if policy is not None:
        args += ["--policy", "-"]
        stdin = json.dumps(policy)
    printed = live.cli(*args, stdin=stdin).stdout
    access_key_id = re.search(r"AccessKeyId: (\S+)", printed).group(1)
    return access_key_id, re.search(r"AccessKeySecret: (\S+)", printed).group(1)


def app_policy(key_id: str, alias: str) -> dict:
    """The README's first example: an application that may only use one key, by id or alias."""
    return {"Version": "1", "Statement": [{
        "Effect": "Allow",
        "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        "Resource": [f"{ARN}:key/{key_id}", f"{ARN}:alias/{alias.removeprefix('alias/')}"],
    }]}


OPERATOR_POLICY = {"Version": "1", "Statement": [
    {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
    {"Effect": "Deny", "Action": ["kms:Decrypt", "kms:GenerateDataKey*", "kms:Encrypt", "kms:ReEncrypt*"],
     "Resource": "*"},
]}


@pytest.fixture(scope="module")
def app_key(live):
    admin = make_sdk("tea-v3", live)
    key_id = admin.call("CreateKey")["KeyMetadata"]["KeyId"]
    alias = f"alias/app-{uuid.uuid4().hex[:8]}"
    admin.call("CreateAlias", AliasName=alias, KeyId=key_id)
    other = admin.call("CreateKey")["KeyMetadata"]["KeyId"]
    access_key_id, secret = new_access_key(live, app_policy(key_id, alias))
    return {"key": key_id, "alias": alias, "other": other, "ak": access_key_id, "secret": secret}


@pytest.mark.parametrize("name", SDK_NAMES)
def test_application_policy(live, app_key, name):
    app = make_sdk(name, live, access_key_id=app_key["ak"], secret=app_key["secret"])
    for key_ref in (app_key["alias"], app_key["key"]):
        data_key = app.call("GenerateDataKey", KeyId=key_ref)
        assert app.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]
    for action, params, resource in [
        ("Encrypt", {"KeyId": app_key["alias"], "Plaintext": "YQ=="}, f"{ARN}:key/{app_key['key']}"),
        ("GenerateDataKey", {"KeyId": app_key["other"]}, f"{ARN}:key/{app_key['other']}"),
        ("DescribeKey", {"KeyId": app_key["key"]}, f"{ARN}:key/{app_key['key']}"),
        ("ListKeys", {}, f"{ARN}:key"),
        ("CreateKey", {}, f"{ARN}:key"),
        ("DisableKey", {"KeyId": app_key["key"]}, f"{ARN}:key/{app_key['key']}"),
    ]:
        err = refused(app, action, **params)
        assert (err.status, err.code) == (403, "Forbidden.NoPermission"), action
        assert f"This operation for {resource} is forbidden by permission system." in err.message
    # A key the caller may not use is refused before anything says whether it exists.
    missing = str(uuid.uuid4())
    assert refused(app, "GenerateDataKey", KeyId=missing).code == "Forbidden.NoPermission"
    assert refused(app, "GenerateDataKey", KeyId="alias/nothing-here").code == "Forbidden.NoPermission"
    # Decrypting another key's blob is refused too: the blob names its key.
    admin = make_sdk("tea-v3", live)
    blob = admin.call("Encrypt", KeyId=app_key["other"], Plaintext="YQ==")["CiphertextBlob"]
    err = refused(app, "Decrypt", CiphertextBlob=blob)
    assert (err.status, err.code) == (403, "Forbidden.NoPermission")


def test_operator_policy(live):
    access_key_id, secret = new_access_key(live, OPERATOR_POLICY)
    operator = make_sdk("legacy", live, access_key_id=access_key_id, secret=secret)
    key_id = operator.call("CreateKey", Description="made by an operator")["KeyMetadata"]["KeyId"]
    operator.call("DisableKey", KeyId=key_id)
    operator.call("EnableKey", KeyId=key_id)
    operator.call("CreateKeyVersion", KeyId=key_id)
    assert operator.call("ListKeys")["TotalCount"] >= 1
    blob = make_sdk("tea-v3", live).call("Encrypt", KeyId=key_id, Plaintext="YQ==")["CiphertextBlob"]
    for action, params in [("Decrypt", {"CiphertextBlob": blob}), ("GenerateDataKey", {"KeyId": key_id}),
                           ("GenerateDataKeyWithoutPlaintext", {"KeyId": key_id}),
                           ("ReEncrypt", {"CiphertextBlob": blob, "DestinationKeyId": key_id})]:
        err = refused(operator, action, **params)
        assert (err.status, err.code) == (403, "Forbidden.NoPermission"), action


def test_policy_changes_reach_every_worker_at_once(live):
    access_key_id, secret = new_access_key(live)
    client = make_sdk("tea-v3", live, access_key_id=access_key_id, secret=secret)
    client.call("GenerateDataKey", KeyId=live.alias)
    deny = {"Version": "1", "Statement": [{"Effect": "Deny", "Action": "kms:*", "Resource": "*"}]}
    shown = live.cli("access-key", "policy", "set", access_key_id, "-", stdin=json.dumps(deny)).stdout
    assert json.loads(shown) == deny
    assert json.loads(live.cli("access-key", "policy", "show", access_key_id).stdout) == deny
    for _ in range(6):  # whichever worker answers
        assert refused(client, "GenerateDataKey", KeyId=live.alias).code == "Forbidden.NoPermission"
    bad = live.cli("access-key", "policy", "set", access_key_id, "-", stdin='{"Version":"2"}', check=False)
    assert bad.returncode != 0 and "invalid policy" in bad.stderr
    bad = live.cli("access-key", "create", "--policy", "-", stdin="[]", check=False)
    assert bad.returncode != 0 and "invalid policy" in bad.stderr


@pytest.mark.parametrize("name", SDK_NAMES)
def test_disable_enable_delete_access_key(live, name):
    access_key_id, secret = new_access_key(live)
    client = make_sdk(name, live, access_key_id=access_key_id, secret=secret)
    client.call("DescribeKey", KeyId=live.alias)
    assert live.cli("access-key", "disable", access_key_id).stdout.strip() == "Disabled"
    assert f"{access_key_id}  Disabled" in live.cli("access-key", "list").stdout
    for _ in range(4):
        err = refused(client, "DescribeKey", KeyId=live.alias)
        assert (err.status, err.code) == (403, "Forbidden.AccessKey")
    live.cli("access-key", "enable", access_key_id)
    client.call("DescribeKey", KeyId=live.alias)
    live.cli("access-key", "delete", access_key_id)
    err = refused(client, "DescribeKey", KeyId=live.alias)
    assert (err.status, err.code) == (404, "InvalidAccessKeyId.NotFound")
    assert access_key_id not in live.cli("access-key", "list").stdout
    assert live.cli("access-key", "disable", access_key_id, check=False).returncode != 0


def test_access_key_list_shows_no_secret(live):
    access_key_id, secret = new_access_key(live)
    listing = live.cli("access-key", "list").stdout
    assert access_key_id in listing and secret not in listing


def test_sts_tokens_are_refused(live):
    config = Config(access_key_id=live.access_key_id, access_key_secret=live.access_key_secret,
                    security_token="sts-token", endpoint=live.endpoint, protocol="http")
    with pytest.raises(ResponseException) as caught:
        TeaClient(config).describe_key(tea_models.DescribeKeyRequest(key_id=live.alias))
    assert (caught.value.status_code, caught.value.code) == (400, "InvalidSecurityToken.NotSupported")
    legacy = AcsClient(region_id="cn-hangzhou", credential=StsTokenCredential(
        live.access_key_id, live.access_key_secret, "sts-token"))
    request = GenerateDataKeyRequest()
    request.set_endpoint(live.endpoint)
    request.set_protocol_type("http")
    request.set_KeyId(live.alias)
    with pytest.raises(Exception) as caught:
        legacy.do_action_with_exception(request)
    assert caught.value.get_error_code() == "InvalidSecurityToken.NotSupported"


def test_audit_trail_and_no_secret_anywhere(live):
    """A whole scenario, then every file under the data directory and the server log are searched for each
    plaintext data key, plaintext, access key secret and the PIN: none may appear."""
    access_key_id, secret = new_access_key(live)
    client = make_sdk("tea-v3", live, access_key_id=access_key_id, secret=secret)
    legacy = make_sdk("legacy", live, access_key_id=access_key_id, secret=secret)
    key_id = client.call("CreateKey")["KeyMetadata"]["KeyId"]
    secrets = [secret, live.access_key_secret, PIN]
    request_ids = {}
    for index in range(5):
        data_key = client.call("GenerateDataKey", KeyId=key_id, EncryptionContext={"n": str(index)})
        request_ids[data_key["RequestId"]] = ("GenerateDataKey", "Success", key_id)
        secrets += [data_key["Plaintext"], base64.b64decode(data_key["Plaintext"]).hex()]
        opened = legacy.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"],
                             EncryptionContext={"n": str(index)})
        request_ids[opened["RequestId"]] = ("Decrypt", "Success", key_id)
        message = base64.b64encode(f"message {uuid.uuid4()}".encode()).decode()
        secrets.append(message)
        sealed = client.call("Encrypt", KeyId=key_id, Plaintext=message)
        request_ids[sealed["RequestId"]] = ("Encrypt", "Success", key_id)
    # Refusals are audited too; a wrong signature on a request carrying a plaintext must not leak it.
    wrong = make_sdk("legacy", live, access_key_id=access_key_id, secret=secret[::-1])
    refused(wrong, "Encrypt", KeyId=key_id, Plaintext=secrets[-1])
    refused(client, "Decrypt", CiphertextBlob="bm90IGEgYmxvYg==")
    live.stop()  # flushes the audit trail
    live.start()

    audit_lines = [json.loads(line) for line in (live.data_dir / "audit.log").read_text().splitlines()]
    fields = {"time", "request_id", "access_key_id", "source_ip", "action", "key_id", "key_version_id",
              "context_sha256", "outcome", "http_status", "latency_ms"}
    assert all(set(line) == fields for line in audit_lines)
    by_id = {line["request_id"]: line for line in audit_lines}
    for request_id, (action, outcome, audited_key) in request_ids.items():
        line = by_id[request_id]
        assert (line["action"], line["outcome"], line["key_id"], line["access_key_id"]) == (
            action, outcome, audited_key, access_key_id)
        assert line["source_ip"] == "127.0.0.1" and line["http_status"] == 200 and line["latency_ms"] >= 0
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", line["key_version_id"])
    contexts = {line["context_sha256"] for line in audit_lines if line["action"] == "GenerateDataKey"
                and line["access_key_id"] == access_key_id}
    assert len(contexts) == 5 and all(re.fullmatch(r"[0-9a-f]{64}", c) for c in contexts)
    outcomes = {(line["action"], line["outcome"], line["http_status"]) for line in audit_lines}
    assert ("Encrypt", "SignatureDoesNotMatch", 400) in outcomes
    assert ("Decrypt", "InvalidParameter", 400) in outcomes

    searched = [path for path in live.data_dir.rglob("*") if path.is_file()] + [live.log_path]
    assert live.data_dir / "audit.log" in searched and len(searched) > 5
    for path in searched:
        content = path.read_bytes()
        for value in secrets:
            assert value.encode() not in content, f"{path.name} holds a secret"


def test_tls_for_the_legacy_sdk_that_only_speaks_https(tmp_path, monkeypatch):
    tls = provision_server(tmp_path / "tls", workers=1, tls=True)
    tls.start()
    try:
        # Code that cannot be edited: the request class keeps its hard-wired HTTPS; only the endpoint
        # resolver and the CA bundle point it here.
        monkeypatch.setenv("ALIBABA_CLOUD_CA_BUNDLE", str(tls.ca))
        resolver = UserCustomizedEndpointResolver()  # the class-level table the SDK consults first
        resolver.put_endpoint_entry("cn-hangzhou", "kms", tls.endpoint)
        monkeypatch.setattr(DefaultEndpointResolver, "predefined_endpoint_resolver", resolver)
        client = AcsClient(tls.access_key_id, tls.access_key_secret, "cn-hangzhou")
        request = GenerateDataKeyRequest()
        request.set_KeyId(tls.alias)
        assert request.get_protocol_type() == "https"
        data_key = json.loads(client.do_action_with_exception(request))
        decrypt = DecryptRequest()
        decrypt.set_CiphertextBlob(data_key["CiphertextBlob"])
        assert json.loads(client.do_action_with_exception(decrypt))["Plaintext"] == data_key["Plaintext"]

        monkeypatch.delenv("ALIBABA_CLOUD_CA_BUNDLE")
        with pytest.raises(Exception) as caught:
            AcsClient(tls.access_key_id, tls.access_key_secret, "cn-hangzhou").do_action_with_exception(request)
        assert "SSL" in str(caught.value) or "certificate" in str(caught.value).lower()

        # The Tea SDK over HTTPS, trusting the development CA (the snippet `make run TLS=1` prints).
        tea = TeaClient(Config(access_key_id=tls.access_key_id, access_key_secret=tls.access_key_secret,
                               endpoint=tls.endpoint, protocol="https"))
        trust = RuntimeOptions(ca=str(tls.ca))
        key = tea.generate_data_key_with_options(tea_models.GenerateDataKeyRequest(key_id=tls.alias), trust).body
        opened = tea.decrypt_with_options(tea_models.DecryptRequest(ciphertext_blob=key.ciphertext_blob), trust)
        assert opened.body.plaintext == key.plaintext
        assert ssl.get_server_certificate(("127.0.0.1", tls.port), ca_certs=str(tls.ca))
    finally:
        assert tls.stop() == 0, tls.log()


def test_policies_and_the_audit_trail_know_the_asymmetric_actions(live):
    """A Deny on kms:AsymmetricSign refuses signing but not verifying; the audit names the actions with the key
    and version, and no decrypted plaintext reaches a file."""
    owner = make_sdk("tea-v3", live)
    meta = owner.call("CreateKey", KeySpec="RSA_2048", KeyUsage="SIGN/VERIFY")["KeyMetadata"]
    key = {"KeyId": meta["KeyId"], "KeyVersionId": meta["PrimaryKeyVersion"]}
    deny_sign = {"Version": "1", "Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "kms:AsymmetricSign", "Resource": f"acs:kms:*:*:key/{key['KeyId']}"}]}
    access_key_id, secret = new_access_key(live, deny_sign)
    client = make_sdk("tea-v3", live, access_key_id=access_key_id, secret=secret)
    digest = base64.b64encode(bytes(32)).decode()
    err = refused(client, "AsymmetricSign", **key, Algorithm="RSA_PSS_SHA_256", Digest=digest)
    assert (err.status, err.code) == (403, "Forbidden.NoPermission")
    signature = owner.call("AsymmetricSign", **key, Algorithm="RSA_PSS_SHA_256", Digest=digest)["Value"]
    verified = client.call("AsymmetricVerify", **key, Algorithm="RSA_PSS_SHA_256", Digest=digest, Value=signature)
    assert verified["Value"] is True
    encrypting = owner.call("CreateKey", KeySpec="RSA_2048")["KeyMetadata"]
    enc_key = {"KeyId": encrypting["KeyId"], "KeyVersionId": encrypting["PrimaryKeyVersion"]}
    plaintext = base64.b64encode(f"secret {uuid.uuid4()}".encode()).decode()
    sealed = client.call("AsymmetricEncrypt", **enc_key, Algorithm="RSAES_OAEP_SHA_256", Plaintext=plaintext)
    opened = client.call("AsymmetricDecrypt", **enc_key, Algorithm="RSAES_OAEP_SHA_256",
                         CiphertextBlob=sealed["CiphertextBlob"])
    assert opened["Plaintext"] == plaintext
    live.stop()  # flushes the audit trail
    live.start()
    audit = [json.loads(line) for line in (live.data_dir / "audit.log").read_text().splitlines()]
    mine = {(line["action"], line["outcome"], line["key_id"], line["key_version_id"]) for line in audit
            if line["access_key_id"] == access_key_id}
    assert ("AsymmetricSign", "Forbidden.NoPermission", key["KeyId"]) in {entry[:3] for entry in mine}, mine
    assert ("AsymmetricVerify", "Success", key["KeyId"], key["KeyVersionId"]) in mine
    assert ("AsymmetricDecrypt", "Success", enc_key["KeyId"], enc_key["KeyVersionId"]) in mine
    for path in [p for p in live.data_dir.rglob("*") if p.is_file()] + [live.log_path]:
        content = path.read_bytes()
        assert plaintext.encode() not in content and base64.b64decode(plaintext) not in content, path.name
