"""Moving a running SQLite deployment to PostgreSQL with ``hsmkms migrate-store``: nothing is lost.

A single-node deployment makes keys in every state (with aliases, tags, versions, a rotation policy,
deletion protection, a destroyed key) and blobs under every version through the official SDKs, and an access
key with a policy.  The server stops, the configuration gains ``[store] url``, the command copies the
metadata, and the server starts on PostgreSQL: every blob decrypts, everything reads back as it was.
"""

from __future__ import annotations

import re
import sqlite3

import pytest

from tests.e2e.conftest import SDK_NAMES, make_sdk
from tests.e2e.sdk import ApiError
from tests.e2e.server import provision_server

pytestmark = pytest.mark.e2e

DENY_DECRYPT = ('{"Version":"1","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"},'
                '{"Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}]}')


def snapshot(client, keys: list[str]) -> dict:
    """What the API says about the deployment (request ids aside)."""
    def clean(body: dict) -> dict:
        return {k: v for k, v in body.items() if k != "RequestId"}

    return {
        "keys": {key: clean(client.call("DescribeKey", KeyId=key)) for key in keys},
        "versions": {key: clean(client.call("ListKeyVersions", KeyId=key, PageSize=100)) for key in keys},
        "tags": {key: clean(client.call("ListResourceTags", KeyId=key)) for key in keys},
        "aliases": clean(client.call("ListAliases", PageSize=100)),
        "list": clean(client.call("ListKeys", PageSize=100)),
    }


def test_moving_from_sqlite_to_postgres_loses_nothing(tmp_path, postgres_url):
    live = provision_server(tmp_path / "deployment", workers=1)
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(DENY_DECRYPT)
    limited = live.cli("access-key", "create", "--policy", str(policy_file)).stdout
    limited_id = re.search(r"AccessKeyId: (\S+)", limited).group(1)
    limited_secret = re.search(r"AccessKeySecret: (\S+)", limited).group(1)
    blobs = []
    live.start()
    try:
        tea = make_sdk("tea-v3", live)
        keys = [tea.call("CreateKey", Description=f"key {i}")["KeyMetadata"]["KeyId"] for i in range(4)]
        rotating, protected, disabled, doomed = keys
        tea.call("UpdateRotationPolicy", KeyId=rotating, EnableAutomaticRotation=True, RotationInterval="30d")
        tea.call("CreateAlias", AliasName="alias/rotating", KeyId=rotating)
        tea.call("TagResource", KeyId=protected,
                 Tags='[{"TagKey":"team","TagValue":"pay"},{"TagKey":"x","TagValue":"y"}]')
        tea.call("SetDeletionProtection", KeyId=protected, EnableDeletionProtection=True,
                 DeletionProtectionDescription="keep")
        for index, name in enumerate(SDK_NAMES):
            client = make_sdk(name, live)
            for key in (rotating, protected, disabled, doomed, live.alias):
                context = {"sdk": name, "i": str(index)}
                made = client.call("GenerateDataKey", KeyId=key, EncryptionContext=context)
                blobs.append((made["CiphertextBlob"], context, made["Plaintext"], key))
                sealed = client.call("Encrypt", KeyId=key, Plaintext="aGVsbG8=", EncryptionContext=context)
                blobs.append((sealed["CiphertextBlob"], context, "aGVsbG8=", key))
            tea.call("CreateKeyVersion", KeyId=rotating)  # the next SDK's blobs use a newer version
        tea.call("DisableKey", KeyId=disabled)
        tea.call("ScheduleKeyDeletion", KeyId=doomed, PendingWindowInDays=7)
        before = snapshot(tea, [rotating, protected, disabled])
    finally:
        assert live.stop() == 0
    # The doomed key's window "passed": it is destroyed in the HSM and in the metadata, as purge-due does.
    with sqlite3.connect(live.data_dir / "hsmkms.db") as database:
        database.execute("UPDATE keys SET delete_at = 1 WHERE key_id = ?", (doomed,))
    assert doomed in live.cli("purge-due").stdout
    listed = before["list"]
    listed["Keys"]["Key"] = [entry for entry in listed["Keys"]["Key"] if entry["KeyId"] != doomed]
    listed["TotalCount"] -= 1

    with open(live.config, "a", encoding="utf-8") as config:
        config.write(f'\n[store]\nurl = "{postgres_url}"\n')
    moved = live.cli("migrate-store").stdout
    assert "keys: 5 rows" in moved and "access_keys: 2 rows" in moved
    assert "not empty" in live.cli("migrate-store", check=False).stderr  # a second copy is refused

    live.start()
    try:
        tea = make_sdk("tea-v3", live)
        assert snapshot(tea, [rotating, protected, disabled]) == before
        tea.call("EnableKey", KeyId=disabled)
        for name in SDK_NAMES:
            client = make_sdk(name, live)
            for blob, context, plaintext, key in blobs:
                if key == doomed:
                    with pytest.raises(ApiError) as gone:
                        client.call("Decrypt", CiphertextBlob=blob, EncryptionContext=context)
                    assert gone.value.code == "Forbidden.KeyNotFound"
                else:
                    assert client.call("Decrypt", CiphertextBlob=blob, EncryptionContext=context)["Plaintext"] == \
                        plaintext
        denied = make_sdk("tea-v3", live, access_key_id=limited_id, secret=limited_secret)
        with pytest.raises(ApiError) as refused:  # the policy came along
            denied.call("Decrypt", CiphertextBlob=blobs[0][0], EncryptionContext=blobs[0][1])
        assert refused.value.code == "Forbidden.NoPermission"
        assert denied.call("DescribeKey", KeyId=rotating)["KeyMetadata"]["KeyId"] == rotating
        assert tea.call("CreateKeyVersion", KeyId="alias/rotating")["KeyVersion"]["KeyId"] == rotating
    finally:
        assert live.stop() == 0
    assert "consistent" in live.cli("doctor").stdout
