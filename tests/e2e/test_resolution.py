"""A request's keys are resolved once, and every name it reached them by is authorized.

Through the official SDKs against an in-process server: alias calls need the right on the key the alias
points to now; a key ARN with an alias path is checked as the alias it names; and the handler acts on the
resolution that was authorized (one lookup per KeyId, one decoding per blob), so an alias moved in between
cannot redirect a request.
"""

from __future__ import annotations

import json
import uuid

import pytest

from hsmkms.errors import StateModifiedFailed
from hsmkms.policy import parse_policy
from hsmkms.service import blob as blob_module
from hsmkms.service.keys import KeyService
from tests.e2e.conftest import SDK_NAMES, make_sdk
from tests.e2e.sdk import ApiError

ACCOUNT = "acs:kms:cn-hangzhou:1234567890123456"


def refused(client, action: str, **params) -> ApiError:
    with pytest.raises(ApiError) as caught:
        client.call(action, **params)
    return caught.value


def restricted(server, name: str, statements: list[dict]):
    policy = parse_policy(json.dumps({"Version": "1", "Statement": statements}))
    access_key_id, secret = server.runtime.services.access_keys.create("restricted", policy)
    return make_sdk(name, server, access_key_id=access_key_id, secret=secret)


@pytest.fixture
def two_keys(clocked):
    """Key A (usable) and key B (denied everything), with B's alias."""
    admin = make_sdk("tea-v3", clocked)
    key_a = admin.call("CreateKey")["KeyMetadata"]["KeyId"]
    key_b = admin.call("CreateKey")["KeyMetadata"]["KeyId"]
    alias_b = f"alias/b-{uuid.uuid4().hex[:8]}"
    admin.call("CreateAlias", AliasName=alias_b, KeyId=key_b)
    return admin, key_a, key_b, alias_b


def deny_key(key_id: str) -> list[dict]:
    return [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "kms:*", "Resource": f"{ACCOUNT}:key/{key_id}"}]


@pytest.mark.parametrize("name", SDK_NAMES)
def test_update_alias_needs_the_key_the_alias_points_to_now(clocked, two_keys, name):
    admin, key_a, key_b, alias_b = two_keys
    caller = restricted(clocked, name, deny_key(key_b))
    err = refused(caller, "UpdateAlias", AliasName=alias_b, KeyId=key_a)
    assert (err.status, err.code) == (403, "Forbidden.NoPermission")
    assert f"{ACCOUNT}:key/{key_b}" in err.message
    # The alias still names B: other applications' data keys under it stay out of the caller's reach.
    assert admin.call("DescribeKey", KeyId=alias_b)["KeyMetadata"]["KeyId"] == key_b


@pytest.mark.parametrize("name", SDK_NAMES)
def test_update_alias_needs_the_new_key_and_the_alias(clocked, two_keys, name):
    admin, key_a, key_b, alias_b = two_keys
    spare = admin.call("CreateKey")["KeyMetadata"]["KeyId"]
    alias_spare = f"alias/spare-{uuid.uuid4().hex[:8]}"
    admin.call("CreateAlias", AliasName=alias_spare, KeyId=spare)
    caller = restricted(clocked, name, deny_key(key_b))
    assert refused(caller, "UpdateAlias", AliasName=alias_spare, KeyId=key_b).code == "Forbidden.NoPermission"
    alias_denied = restricted(clocked, name, [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "kms:UpdateAlias", "Resource": f"{ACCOUNT}:alias/*"}])
    assert refused(alias_denied, "UpdateAlias", AliasName=alias_spare, KeyId=key_a).code == "Forbidden.NoPermission"
    caller.call("UpdateAlias", AliasName=alias_spare, KeyId=key_a)  # all three allowed: it moves
    assert admin.call("DescribeKey", KeyId=alias_spare)["KeyMetadata"]["KeyId"] == key_a


@pytest.mark.parametrize("name", SDK_NAMES)
def test_delete_alias_needs_the_key_the_alias_points_to(clocked, two_keys, name):
    admin, key_a, key_b, alias_b = two_keys
    caller = restricted(clocked, name, deny_key(key_b))
    assert refused(caller, "DeleteAlias", AliasName=alias_b).code == "Forbidden.NoPermission"
    assert admin.call("DescribeKey", KeyId=alias_b)["KeyMetadata"]["KeyId"] == key_b
    alias_a = f"alias/a-{uuid.uuid4().hex[:8]}"
    admin.call("CreateAlias", AliasName=alias_a, KeyId=key_a)
    caller.call("DeleteAlias", AliasName=alias_a)
    assert refused(admin, "DescribeKey", KeyId=alias_a).code == "Forbidden.AliasNotFound"


@pytest.mark.parametrize("name", SDK_NAMES)
def test_a_key_arn_with_an_alias_path_is_checked_as_that_alias(clocked, two_keys, name):
    admin, key_a, key_b, alias_b = two_keys
    alias_a = f"alias/a-{uuid.uuid4().hex[:8]}"
    admin.call("CreateAlias", AliasName=alias_a, KeyId=key_a)
    caller = restricted(clocked, name, [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "kms:*", "Resource": f"{ACCOUNT}:alias/{alias_a.removeprefix('alias/')}"}])
    for key_ref in (alias_a, f"{ACCOUNT}:alias/{alias_a.removeprefix('alias/')}",
                    f"{ACCOUNT}:key/{alias_a}"):
        err = refused(caller, "GenerateDataKey", KeyId=key_ref)
        assert (err.status, err.code) == (403, "Forbidden.NoPermission"), key_ref
    # The same key by its own id is not the denied alias.
    assert caller.call("GenerateDataKey", KeyId=key_a)["KeyId"] == key_a
    # Allowed through the alias ARN form, the alias path resolves to its key.
    assert admin.call("GenerateDataKey", KeyId=f"{ACCOUNT}:key/{alias_a}")["KeyId"] == key_a


def count_calls(monkeypatch, owner, name: str) -> list:
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_each_key_is_resolved_once_and_each_blob_decoded_once(clocked, two_keys, monkeypatch):
    admin, key_a, key_b, alias_b = two_keys
    alias_reads = count_calls(monkeypatch, KeyService, "_alias_target")
    decodings = count_calls(monkeypatch, blob_module, "decode")
    data_key = admin.call("GenerateDataKey", KeyId=alias_b)
    assert len(alias_reads) == 1 and not decodings
    admin.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"])
    assert len(decodings) == 1
    admin.call("ReEncrypt", CiphertextBlob=data_key["CiphertextBlob"], DestinationKeyId=alias_b)
    assert len(decodings) == 2 and len(alias_reads) == 2


def test_an_alias_moved_after_authorization_is_not_acted_on(clocked, two_keys):
    """UpdateAlias and DeleteAlias act only while the alias still points where it was authorized to."""
    admin, key_a, key_b, alias_b = two_keys
    keys = clocked.runtime.services.keys
    record_a, record_b = keys.resolve(key_a), keys.resolve(key_b)
    authorized_as = keys.alias_lookup(alias_b).record()
    assert authorized_as == record_b
    admin.call("UpdateAlias", AliasName=alias_b, KeyId=key_a)  # someone else moves it meanwhile
    with pytest.raises(StateModifiedFailed):
        keys.update_alias(alias_b, authorized_as, record_b)
    with pytest.raises(StateModifiedFailed):
        keys.delete_alias(alias_b, authorized_as)
    assert admin.call("DescribeKey", KeyId=alias_b)["KeyMetadata"]["KeyId"] == key_a
    keys.delete_alias(alias_b, record_a)
    assert refused(admin, "DescribeKey", KeyId=alias_b).code == "Forbidden.AliasNotFound"
