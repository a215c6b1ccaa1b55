"""The key lifecycle through the official SDKs, against a server whose clock the test moves.

States and the §2.8 matrix, scheduled deletion and real destruction in the HSM, versions and rotation,
aliases, tags, ListKeys filters and ReEncrypt.
"""

from __future__ import annotations

import base64
import os
import time
import uuid

import pytest

from tests.e2e.conftest import make_sdk
from tests.e2e.sdk import ApiError
from tests.e2e.test_import import import_material

DAY = 86400


@pytest.fixture(params=["tea-v3", "tea-v2", "legacy"])
def sdk(request, clocked):
    return make_sdk(request.param, clocked)


@pytest.fixture
def tea(clocked):
    return make_sdk("tea-v3", clocked)


def refused(client, action: str, **params) -> ApiError:
    with pytest.raises(ApiError) as caught:
        client.call(action, **params)
    return caught.value


def new_key(client, **params) -> str:
    return client.call("CreateKey", **params)["KeyMetadata"]["KeyId"]


def describe(client, key_id: str) -> dict:
    return client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]


# --- the key-state x action matrix ---------------------------------------------------------------------


def prepared(client, state: str) -> dict:
    """A key in ``state`` with a blob, an alias and a tag made while it was Enabled.  PendingImport: a key with
    imported material (Origin=EXTERNAL) whose material was deleted after the blob was made."""
    key_id = new_key(client, Origin="EXTERNAL") if state == "PendingImport" else new_key(client)
    material = os.urandom(32)
    if state == "PendingImport":
        import_material(client, key_id, material)
    facts = {
        "key": key_id,
        "blob": client.call("Encrypt", KeyId=key_id, Plaintext="YQ==")["CiphertextBlob"],
        "alias": f"alias/m-{uuid.uuid4().hex[:10]}",
        "version": describe(client, key_id)["PrimaryKeyVersion"],
        "other": new_key(client),
    }
    facts["external"] = state == "PendingImport"
    facts["material"] = material
    client.call("CreateAlias", AliasName=facts["alias"], KeyId=key_id)
    client.call("TagResource", KeyId=key_id, Tags='[{"TagKey":"t","TagValue":"v"}]')
    if state == "Disabled":
        client.call("DisableKey", KeyId=key_id)
    elif state == "PendingDeletion":
        client.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    elif state == "PendingImport":
        client.call("DeleteKeyMaterial", KeyId=key_id)
    assert describe(client, key_id)["KeyState"] == state
    return facts


CALLS = {
    "DescribeKey": lambda c, f: c.call("DescribeKey", KeyId=f["key"]),
    "DeleteAlias": lambda c, f: c.call("DeleteAlias", AliasName=f["alias"]),
    "ListAliasesByKeyId": lambda c, f: c.call("ListAliasesByKeyId", KeyId=f["key"]),
    "ListResourceTags": lambda c, f: c.call("ListResourceTags", KeyId=f["key"]),
    "DescribeKeyVersion": lambda c, f: c.call("DescribeKeyVersion", KeyId=f["key"], KeyVersionId=f["version"]),
    "ListKeyVersions": lambda c, f: c.call("ListKeyVersions", KeyId=f["key"]),
    "GenerateDataKey": lambda c, f: c.call("GenerateDataKey", KeyId=f["key"]),
    "GenerateDataKeyWithoutPlaintext": lambda c, f: c.call("GenerateDataKeyWithoutPlaintext", KeyId=f["key"]),
    "Encrypt": lambda c, f: c.call("Encrypt", KeyId=f["key"], Plaintext="YQ=="),
    "Decrypt": lambda c, f: c.call("Decrypt", CiphertextBlob=f["blob"]),
    "ReEncrypt": lambda c, f: c.call("ReEncrypt", CiphertextBlob=f["blob"], DestinationKeyId=f["other"]),
    "ReEncrypt(destination)": lambda c, f: c.call(
        "ReEncrypt", CiphertextBlob=c.call("Encrypt", KeyId=f["other"], Plaintext="YQ==")["CiphertextBlob"],
        DestinationKeyId=f["key"]),
    "CreateKeyVersion": lambda c, f: c.call("CreateKeyVersion", KeyId=f["key"]),
    "UpdateRotationPolicy": lambda c, f: c.call("UpdateRotationPolicy", KeyId=f["key"],
                                                EnableAutomaticRotation=True, RotationInterval="30d"),
    "UpdateKeyDescription": lambda c, f: c.call("UpdateKeyDescription", KeyId=f["key"], Description="new"),
    "TagResource": lambda c, f: c.call("TagResource", KeyId=f["key"], Tags='[{"TagKey":"n","TagValue":"v"}]'),
    "UntagResource": lambda c, f: c.call("UntagResource", KeyId=f["key"], TagKeys='["t"]'),
    "TagResources": lambda c, f: c.call("TagResources", RegionId="cn-hangzhou", ResourceType="key",
                                        ResourceId=[f["key"]], Tag=[{"Key": "n", "Value": "v"}]),
    "UntagResources": lambda c, f: c.call("UntagResources", RegionId="cn-hangzhou", ResourceType="key",
                                          ResourceId=[f["key"]], TagKey=["t"]),
    "EnableKey": lambda c, f: c.call("EnableKey", KeyId=f["key"]),
    "DisableKey": lambda c, f: c.call("DisableKey", KeyId=f["key"]),
    "ScheduleKeyDeletion": lambda c, f: c.call("ScheduleKeyDeletion", KeyId=f["key"], PendingWindowInDays=30),
    "CreateAlias": lambda c, f: c.call("CreateAlias", AliasName=f"alias/n-{uuid.uuid4().hex[:8]}", KeyId=f["key"]),
    "CancelKeyDeletion": lambda c, f: c.call("CancelKeyDeletion", KeyId=f["key"]),
    "UpdateAlias": lambda c, f: c.call("UpdateAlias", AliasName=_alias_of_other(c, f), KeyId=f["key"]),
    "SetDeletionProtection": lambda c, f: c.call("SetDeletionProtection", KeyId=f["key"],
                                                 EnableDeletionProtection=True),
    # Key-material import: on a key whose Origin is not EXTERNAL these answer Unsupported.Origin, after the gate.
    "GetParametersForImport": lambda c, f: _expect_origin(f, lambda: c.call(
        "GetParametersForImport", KeyId=f["key"], WrappingKeySpec="RSA_2048", WrappingAlgorithm="RSAES_OAEP_SHA_1")),
    "DeleteKeyMaterial": lambda c, f: _expect_origin(f, lambda: c.call("DeleteKeyMaterial", KeyId=f["key"])),
    "ImportKeyMaterial": lambda c, f: import_material(c, f["key"], f["material"]) if f["external"] else
    _expect_origin(f, lambda: c.call("ImportKeyMaterial", KeyId=f["key"], ImportToken="none",
                                     EncryptedKeyMaterial=base64.b64encode(bytes(256)).decode())),
}


def _expect_origin(facts, call) -> None:
    """Run ``call``; on a key that is not EXTERNAL, past the state gate, it must answer Unsupported.Origin."""
    if facts["external"]:
        call()
        return
    with pytest.raises(ApiError) as caught:
        call()
    if caught.value.code != "Unsupported.Origin":
        raise caught.value


def _alias_of_other(client, facts) -> str:
    alias = f"alias/o-{uuid.uuid4().hex[:8]}"
    client.call("CreateAlias", AliasName=alias, KeyId=facts["other"])
    return alias


OK, SMF = "ok", "Rejected.StateModifiedFailed"
PI = "Rejected.PendingImport"
ROWS = {  # action: (Enabled, Disabled, PendingDeletion, PendingImport) as in §2.8
    **dict.fromkeys(["DescribeKey", "DeleteAlias", "ListAliasesByKeyId", "ListResourceTags", "DescribeKeyVersion",
                     "ListKeyVersions", "GetParametersForImport", "DeleteKeyMaterial"], (OK, OK, OK, OK)),
    **dict.fromkeys(["GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "Encrypt", "Decrypt", "ReEncrypt",
                     "ReEncrypt(destination)", "CreateKeyVersion", "UpdateRotationPolicy"],
                    (OK, "Rejected.Disabled", "Rejected.PendingDeletion", PI)),
    **dict.fromkeys(["UpdateKeyDescription", "TagResource", "UntagResource", "TagResources", "UntagResources",
                     "UpdateAlias", "SetDeletionProtection"], (OK, OK, "Rejected.PendingDeletion", OK)),
    **dict.fromkeys(["EnableKey", "DisableKey"], (OK, OK, SMF, SMF)),
    **dict.fromkeys(["ScheduleKeyDeletion", "CreateAlias", "ImportKeyMaterial"], (OK, OK, SMF, OK)),
    "CancelKeyDeletion": (SMF, SMF, OK, SMF),
}
STATES = ["Enabled", "Disabled", "PendingDeletion", "PendingImport"]
CELLS = [(action, state, expected) for action, row in ROWS.items()
         for state, expected in zip(STATES, row, strict=True)]


@pytest.mark.parametrize("action, state, expected", CELLS, ids=[f"{a}-{s}" for a, s, _ in CELLS])
def test_key_state_matrix(tea, action, state, expected):
    facts = prepared(tea, state)
    if expected == OK:
        CALLS[action](tea, facts)
    else:
        with pytest.raises(ApiError) as caught:
            CALLS[action](tea, facts)
        assert (caught.value.status, caught.value.code) == (409, expected)


def test_matrix_covers_every_call():
    assert set(CALLS) == set(ROWS)


# --- enable, disable, description, deletion protection ------------------------------------------------


def test_disable_enable_and_description(sdk):
    key_id = new_key(sdk, Description="first")
    sdk.call("DisableKey", KeyId=key_id)
    meta = describe(sdk, key_id)
    assert meta["KeyState"] == "Disabled"
    sdk.call("UpdateKeyDescription", KeyId=key_id, Description="second")
    sdk.call("EnableKey", KeyId=key_id)
    meta = describe(sdk, key_id)
    assert (meta["KeyState"], meta["Description"]) == ("Enabled", "second")
    assert refused(sdk, "UpdateKeyDescription", KeyId=key_id).code == "MissingParameter"


def test_deletion_protection_refuses_scheduling(sdk, clocked):
    key_id = new_key(sdk)
    arn = f"acs:kms:cn-hangzhou:1234567890123456:key/{key_id}"
    sdk.call("SetDeletionProtection", ProtectedResourceArn=arn, EnableDeletionProtection=True,
             DeletionProtectionDescription="used by billing")
    meta = describe(sdk, key_id)
    assert (meta["DeletionProtection"], meta["DeletionProtectionDescription"]) == ("Enabled", "used by billing")
    err = refused(sdk, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    assert (err.status, err.code) == (403, "Forbidden.DeletionProtection")
    sdk.call("SetDeletionProtection", ProtectedResourceArn=arn, EnableDeletionProtection=False)
    assert describe(sdk, key_id)["DeletionProtection"] == "Disabled"
    sdk.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    assert refused(sdk, "SetDeletionProtection", EnableDeletionProtection=True).code == "MissingParameter"


def test_schedule_and_cancel_deletion(sdk, clocked):
    key_id = new_key(sdk)
    sdk.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=10)
    meta = describe(sdk, key_id)
    assert meta["KeyState"] == "PendingDeletion"
    expected = clocked.clock.now + 10 * DAY
    assert meta["DeleteDate"] in {_iso(expected), _iso(expected - 1)}
    sdk.call("CancelKeyDeletion", KeyId=key_id)
    meta = describe(sdk, key_id)
    assert (meta["KeyState"], meta["DeleteDate"]) == ("Enabled", "")


@pytest.mark.parametrize("days, code", [("6", "InvalidParameter"), ("367", "InvalidParameter"),
                                        ("seven", "InvalidParameter"), (None, "MissingParameter")])
def test_deletion_window_bounds(clocked, days, code):
    legacy = make_sdk("legacy", clocked)
    key_id = new_key(legacy)
    params = {"KeyId": key_id} | ({"PendingWindowInDays": days} if days else {})
    err = refused(legacy, "ScheduleKeyDeletion", **params)
    assert (err.status, err.code) == (400, code)
    assert describe(legacy, key_id)["KeyState"] == "Enabled"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- destruction after the window ----------------------------------------------------------------------


def test_key_is_destroyed_in_the_hsm_only_after_its_window(tea, clocked, hsm):
    key_id = new_key(tea)
    tea.call("CreateKeyVersion", KeyId=key_id)
    versions = [v["KeyVersionId"] for v in tea.call("ListKeyVersions", KeyId=key_id)["KeyVersions"]["KeyVersion"]]
    assert len(versions) == 2 and all(hsm.has_key(v) for v in versions)
    blob = tea.call("Encrypt", KeyId=key_id, Plaintext="YQ==")["CiphertextBlob"]
    alias = f"alias/doomed-{uuid.uuid4().hex[:8]}"
    tea.call("CreateAlias", AliasName=alias, KeyId=key_id)
    tea.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    maintenance = clocked.runtime.services.maintenance

    clocked.clock.advance(7 * DAY - 60)  # not yet
    assert key_id not in maintenance.purge_due()
    assert describe(tea, key_id)["KeyState"] == "PendingDeletion"
    assert all(hsm.has_key(v) for v in versions)

    clocked.clock.advance(120)  # the window has passed
    maintenance.run_once()
    assert not any(hsm.has_key(v) for v in versions)
    assert refused(tea, "DescribeKey", KeyId=key_id).code == "Forbidden.KeyNotFound"
    err = refused(tea, "Decrypt", CiphertextBlob=blob)
    assert (err.status, err.code) == (404, "Forbidden.KeyNotFound")
    assert refused(tea, "DescribeKey", KeyId=alias).code == "Forbidden.AliasNotFound"
    listed = {k["KeyId"] for k in tea.call("ListKeys", PageSize=100)["Keys"]["Key"]}
    assert key_id not in listed
    tea.call("CreateAlias", AliasName=alias, KeyId=new_key(tea))  # the alias name is free again
    # The session's token is shared with other tests' stores, whose objects this store calls orphans.
    report = maintenance.doctor()
    assert (report.missing_objects, report.dead_objects, report.interrupted) == ([], [], [])


def test_cancelled_deletion_is_never_purged(tea, clocked, hsm):
    key_id = new_key(tea)
    tea.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    tea.call("CancelKeyDeletion", KeyId=key_id)
    clocked.clock.advance(30 * DAY)
    clocked.runtime.services.maintenance.run_once()
    assert describe(tea, key_id)["KeyState"] == "Enabled"
    assert hsm.has_key(describe(tea, key_id)["PrimaryKeyVersion"])


# --- versions and rotation -----------------------------------------------------------------------------


def test_every_earlier_version_still_decrypts_after_rotations(sdk):
    key_id = new_key(sdk)
    made = []
    for round_number in range(4):
        primary = describe(sdk, key_id)["PrimaryKeyVersion"]
        data_key = sdk.call("GenerateDataKey", KeyId=key_id, EncryptionContext={"round": str(round_number)})
        sealed = sdk.call("Encrypt", KeyId=key_id, Plaintext=f"round {round_number}")
        assert data_key["KeyVersionId"] == sealed["KeyVersionId"] == primary
        made.append((data_key, sealed, round_number))
        version = sdk.call("CreateKeyVersion", KeyId=key_id)["KeyVersion"]
        assert version["KeyId"] == key_id and version["KeyVersionId"] != primary
        assert describe(sdk, key_id)["PrimaryKeyVersion"] == version["KeyVersionId"]
    for data_key, sealed, round_number in made:
        opened = sdk.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"],
                          EncryptionContext={"round": str(round_number)})
        assert (opened["Plaintext"], opened["KeyVersionId"]) == (data_key["Plaintext"], data_key["KeyVersionId"])
        opened = sdk.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"])
        assert (opened["Plaintext"], opened["KeyVersionId"]) == (f"round {round_number}", sealed["KeyVersionId"])
    listed = sdk.call("ListKeyVersions", KeyId=key_id, PageSize=2)
    assert listed["TotalCount"] == 5 and len(listed["KeyVersions"]["KeyVersion"]) == 2
    everything = sdk.call("ListKeyVersions", KeyId=key_id, PageSize=100)["KeyVersions"]["KeyVersion"]
    assert [v["KeyVersionId"] for v in everything][:4] == [d["KeyVersionId"] for d, _, _ in made]


def test_describe_key_version(sdk):
    key_id, other = new_key(sdk), new_key(sdk)
    version = describe(sdk, key_id)["PrimaryKeyVersion"]
    described = sdk.call("DescribeKeyVersion", KeyId=key_id, KeyVersionId=version)["KeyVersion"]
    assert (described["KeyId"], described["KeyVersionId"]) == (key_id, version)
    assert described["CreationDate"].endswith("Z")
    for wrong in [describe(sdk, other)["PrimaryKeyVersion"], str(uuid.uuid4()), "nonsense"]:
        err = refused(sdk, "DescribeKeyVersion", KeyId=key_id, KeyVersionId=wrong)
        assert (err.status, err.code) == (404, "Forbidden.KeyVersionNotFound")


def test_automatic_rotation(sdk, clocked):
    key_id = new_key(sdk, EnableAutomaticRotation=True, RotationInterval="7d")
    meta = describe(sdk, key_id)
    assert (meta["AutomaticRotation"], meta["RotationInterval"]) == ("Enabled", "604800s")
    assert meta["LastRotationDate"] == meta["CreationDate"]
    assert meta["NextRotationDate"] == _iso(int(clocked.clock.now) + 7 * DAY)
    first = meta["PrimaryKeyVersion"]
    blob = sdk.call("Encrypt", KeyId=key_id, Plaintext="b2xk")["CiphertextBlob"]
    maintenance = clocked.runtime.services.maintenance

    clocked.clock.advance(7 * DAY - 10)
    assert key_id not in maintenance.rotate_due()
    clocked.clock.advance(20)
    assert key_id in maintenance.rotate_due()
    meta = describe(sdk, key_id)
    assert meta["PrimaryKeyVersion"] != first
    assert meta["LastRotationDate"] == _iso(int(clocked.clock.now))
    assert key_id not in maintenance.rotate_due()  # rotated once, not again
    assert sdk.call("Decrypt", CiphertextBlob=blob)["KeyVersionId"] == first

    sdk.call("DisableKey", KeyId=key_id)
    assert describe(sdk, key_id)["AutomaticRotation"] == "Suspended"
    clocked.clock.advance(8 * DAY)
    assert key_id not in maintenance.rotate_due()
    sdk.call("EnableKey", KeyId=key_id)
    sdk.call("UpdateRotationPolicy", KeyId=key_id, EnableAutomaticRotation=False)
    meta = describe(sdk, key_id)
    assert (meta["AutomaticRotation"], meta["RotationInterval"], meta["NextRotationDate"]) == ("Disabled", "", "")
    assert key_id not in maintenance.rotate_due()
    sdk.call("UpdateRotationPolicy", KeyId=key_id, EnableAutomaticRotation=True, RotationInterval="720h")
    assert describe(sdk, key_id)["RotationInterval"] == "2592000s"


@pytest.mark.parametrize("interval", ["6d", "731d", "7x", "d7", "-7d", "604799s", "1.5d"])
def test_rotation_interval_bounds(clocked, interval):
    legacy = make_sdk("legacy", clocked)
    err = refused(legacy, "CreateKey", EnableAutomaticRotation="true", RotationInterval=interval)
    assert (err.status, err.code) == (400, "InvalidParameter")
    key_id = new_key(legacy)
    err = refused(legacy, "UpdateRotationPolicy", KeyId=key_id, EnableAutomaticRotation="true",
                  RotationInterval=interval)
    assert (err.status, err.code) == (400, "InvalidParameter")


def test_rotation_needs_an_interval(tea):
    assert refused(tea, "CreateKey", EnableAutomaticRotation=True).code == "MissingParameter"
    key_id = new_key(tea)
    assert refused(tea, "UpdateRotationPolicy", KeyId=key_id, EnableAutomaticRotation=True).code == \
        "MissingParameter"
    assert refused(tea, "UpdateRotationPolicy", KeyId=key_id).code == "MissingParameter"


# --- aliases -------------------------------------------------------------------------------------------


def test_update_alias_and_list_by_key(sdk):
    first, second = new_key(sdk), new_key(sdk)
    alias = f"alias/moving-{uuid.uuid4().hex[:8]}"
    sdk.call("CreateAlias", AliasName=alias, KeyId=first)
    assert sdk.call("Encrypt", KeyId=alias, Plaintext="YQ==")["KeyId"] == first
    sdk.call("UpdateAlias", AliasName=alias, KeyId=second)
    assert sdk.call("Encrypt", KeyId=alias, Plaintext="YQ==")["KeyId"] == second
    by_key = sdk.call("ListAliasesByKeyId", KeyId=second)
    assert [a["AliasName"] for a in by_key["Aliases"]["Alias"]] == [alias]
    assert by_key["TotalCount"] == 1
    assert sdk.call("ListAliasesByKeyId", KeyId=first)["TotalCount"] == 0
    err = refused(sdk, "UpdateAlias", AliasName="alias/never-made", KeyId=first)
    assert (err.status, err.code) == (404, "Forbidden.AliasNotFound")
    assert refused(sdk, "UpdateAlias", AliasName="bad", KeyId=first).code == "InvalidParameter"


# --- tags ----------------------------------------------------------------------------------------------


def test_single_resource_tags(sdk):
    key_id = new_key(sdk, Tags='[{"TagKey":"team","TagValue":"payments"}]')
    sdk.call("TagResource", KeyId=key_id,
             Tags='[{"TagKey":"env","TagValue":"prod"},{"TagKey":"team","TagValue":"core"}]')
    tags = sdk.call("ListResourceTags", KeyId=key_id)["Tags"]["Tag"]
    assert sorted((t["TagKey"], t["TagValue"], t["KeyId"]) for t in tags) == [
        ("env", "prod", key_id), ("team", "core", key_id)]
    sdk.call("UntagResource", KeyId=key_id, TagKeys='["env"]')
    assert [t["TagKey"] for t in sdk.call("ListResourceTags", KeyId=key_id)["Tags"]["Tag"]] == ["team"]


@pytest.mark.parametrize("tags", [
    "not json", '{"TagKey":"a"}', '[{"TagKey":""}]', '[{"TagKey":"aliyun-x","TagValue":"v"}]',
    '[{"TagKey":"acs:x","TagValue":"v"}]', '[{"TagKey":"' + "k" * 129 + '","TagValue":"v"}]',
    '[{"TagKey":"k","TagValue":"' + "v" * 129 + '"}]', '[{"TagKey":"k<script>","TagValue":"v"}]',
    '[{"TagKey":"a","TagValue":"1"},{"TagKey":"a","TagValue":"2"}]',
    "[" + ",".join(f'{{"TagKey":"k{i}","TagValue":"v"}}' for i in range(21)) + "]",
])
def test_bad_tags(clocked, tags):
    legacy = make_sdk("legacy", clocked)
    key_id = new_key(legacy)
    err = refused(legacy, "TagResource", KeyId=key_id, Tags=tags)
    assert (err.status, err.code) == (400, "InvalidParameter")
    assert refused(legacy, "CreateKey", Tags=tags).code == "InvalidParameter"
    assert refused(legacy, "UntagResource", KeyId=key_id, TagKeys="[]").code == "InvalidParameter"


def test_too_many_tags_on_one_key(tea):
    key_id = new_key(tea, Tags="[" + ",".join(f'{{"TagKey":"a{i}","TagValue":"v"}}' for i in range(15)) + "]")
    err = refused(tea, "TagResource", KeyId=key_id,
                  Tags="[" + ",".join(f'{{"TagKey":"b{i}","TagValue":"v"}}' for i in range(6)) + "]")
    assert (err.status, err.code) == (400, "Rejected.LimitExceeded")


def test_multi_resource_tags(tea):
    first, second = new_key(tea), new_key(tea)
    marker = uuid.uuid4().hex[:8]
    tea.call("TagResources", RegionId="cn-hangzhou", ResourceType="key", ResourceId=[first, second],
             Tag=[{"Key": "batch", "Value": marker}, {"Key": "owner", "Value": "ops"}])
    found = tea.call("ListTagResources", RegionId="cn-hangzhou", ResourceType="key",
                     Tag=[{"Key": "batch", "Value": marker}])["TagResources"]["TagResource"]
    assert sorted(r["ResourceId"] for r in found) == sorted([first, second])
    assert all(r["ResourceType"] == "key" and r["TagKey"] == "batch" for r in found)
    by_resource = tea.call("ListTagResources", RegionId="cn-hangzhou", ResourceType="key", ResourceId=[first])
    assert sorted(r["TagKey"] for r in by_resource["TagResources"]["TagResource"]) == ["batch", "owner"]
    assert by_resource["NextToken"] in ("", None)
    tea.call("UntagResources", RegionId="cn-hangzhou", ResourceType="key", ResourceId=[first], TagKey=["batch"])
    assert [t["TagKey"] for t in tea.call("ListResourceTags", KeyId=first)["Tags"]["Tag"]] == ["owner"]
    tea.call("UntagResources", RegionId="cn-hangzhou", ResourceType="key", ResourceId=[second], All=True)
    assert tea.call("ListResourceTags", KeyId=second)["Tags"]["Tag"] == []
    err = refused(tea, "TagResources", RegionId="cn-shanghai", ResourceType="key", ResourceId=[first],
                  Tag=[{"Key": "a", "Value": "b"}])
    assert (err.status, err.code) == (400, "InvalidParameter")
    err = refused(tea, "TagResources", RegionId="cn-hangzhou", ResourceType="secret", ResourceId=[first],
                  Tag=[{"Key": "a", "Value": "b"}])
    assert (err.status, err.code) == (400, "InvalidParameter")


def test_list_tag_resources_pages(tea):
    marker = uuid.uuid4().hex[:8]
    keys = [new_key(tea) for _ in range(3)]
    for key_id in keys:
        tea.call("TagResource", KeyId=key_id, Tags="[" + ",".join(
            f'{{"TagKey":"p{i}","TagValue":"{marker}"}}' for i in range(20)) + "]")
    seen, token = [], None
    for _ in range(10):
        params = {"RegionId": "cn-hangzhou", "ResourceType": "key", "ResourceId": keys}
        if token:
            params["NextToken"] = token
        page = tea.call("ListTagResources", **params)
        seen += page["TagResources"]["TagResource"]
        token = page["NextToken"]
        if not token:
            break
    assert len(seen) == 60 and len({(r["ResourceId"], r["TagKey"]) for r in seen}) == 60


# --- ListKeys filters ----------------------------------------------------------------------------------


def test_list_keys_filters(sdk):
    marker = uuid.uuid4().hex[:8]
    enabled = new_key(sdk, Tags=f'[{{"TagKey":"f","TagValue":"{marker}"}}]')
    disabled = new_key(sdk, Tags=f'[{{"TagKey":"f","TagValue":"{marker}"}}]')
    sdk.call("DisableKey", KeyId=disabled)
    aliased = new_key(sdk)
    sdk.call("CreateAlias", AliasName=f"alias/f-{marker}", KeyId=aliased)

    def listed(filters: str) -> set[str]:
        body = sdk.call("ListKeys", Filters=filters, PageSize=100)
        assert isinstance(body["TotalCount"], int)
        return {k["KeyId"] for k in body["Keys"]["Key"]}

    tagged = f'{{"Key":"TagValue","Values":["{marker}"]}}'
    assert listed(f"[{tagged}]") == {enabled, disabled}
    assert listed(f'[{tagged},{{"Key":"KeyState","Values":["Disabled"]}}]') == {disabled}
    assert listed(f'[{tagged},{{"Key":"KeyState","Values":["Disabled","Enabled"]}}]') == {enabled, disabled}
    assert listed(f'[{{"Key":"AliasName","Values":["alias/f-{marker}"]}}]') == {aliased}
    assert listed(f'[{tagged},{{"Key":"TagKey","Values":["f"]}},{{"Key":"KeySpec","Values":["Aliyun_AES_256"]}}]') \
        == {enabled, disabled}
    assert listed(f'[{tagged},{{"Key":"CreatorType","Values":["Service"]}}]') == set()
    assert listed(f'[{tagged},{{"Key":"ProtectionLevel","Values":["SOFTWARE"]}}]') == set()


@pytest.mark.parametrize("filters", [
    "nope", "{}", '[{"Key":"Color","Values":["red"]}]', '[{"Key":"KeyState"}]',
    '[{"Key":"KeyState","Values":"Enabled"}]', '[{"Key":"KeyState","Values":[]}]',
    "[" + ",".join(['{"Key":"KeyState","Values":["Enabled"]}'] * 11) + "]",
])
def test_bad_list_keys_filters(clocked, filters):
    err = refused(make_sdk("legacy", clocked), "ListKeys", Filters=filters)
    assert (err.status, err.code) == (400, "InvalidParameter")


# --- ReEncrypt -----------------------------------------------------------------------------------------


def test_re_encrypt(sdk):
    source, destination = new_key(sdk), new_key(sdk)
    data_key = sdk.call("GenerateDataKey", KeyId=source, EncryptionContext={"app": "a"})
    moved = sdk.call("ReEncrypt", CiphertextBlob=data_key["CiphertextBlob"], SourceEncryptionContext={"app": "a"},
                     DestinationKeyId=destination, DestinationEncryptionContext={"app": "b"})
    dest_version = describe(sdk, destination)["PrimaryKeyVersion"]
    assert (moved["KeyId"], moved["KeyVersionId"]) == (destination, dest_version)
    assert base64.b64decode(moved["CiphertextBlob"])[:36].decode() == dest_version
    opened = sdk.call("Decrypt", CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"app": "b"})
    assert (opened["Plaintext"], opened["KeyId"]) == (data_key["Plaintext"], destination)
    assert "Plaintext" not in moved
    err = refused(sdk, "ReEncrypt", CiphertextBlob=data_key["CiphertextBlob"], SourceEncryptionContext={"app": "x"},
                  DestinationKeyId=destination)
    assert (err.status, err.code) == (400, "InvalidParameter")
    err = refused(sdk, "ReEncrypt", CiphertextBlob=data_key["CiphertextBlob"], DestinationKeyId=str(uuid.uuid4()),
                  SourceEncryptionContext={"app": "a"})
    assert (err.status, err.code) == (404, "Forbidden.KeyNotFound")
    assert refused(sdk, "ReEncrypt", DestinationKeyId=destination).code == "MissingParameter"


# --- KeyMetadata ---------------------------------------------------------------------------------------


def test_describe_key_returns_every_field(clocked):
    legacy = make_sdk("legacy", clocked)  # the legacy SDK returns the body as sent
    key_id = new_key(legacy, Description="all fields", EnableAutomaticRotation="true", RotationInterval="30d")
    meta = describe(legacy, key_id)
    assert set(meta) == {
        "Arn", "AutomaticRotation", "CreationDate", "Creator", "DKMSInstanceId", "DeleteDate", "DeletionProtection",
        "DeletionProtectionDescription", "Description", "KeyId", "KeySpec", "KeyState", "KeyUsage",
        "LastRotationDate", "MaterialExpireTime", "NextRotationDate", "Origin", "PrimaryKeyVersion",
        "ProtectionLevel", "RotationInterval"}
    assert meta["Arn"] == f"acs:kms:cn-hangzhou:1234567890123456:key/{key_id}"
    assert meta["Creator"] == "1234567890123456"
    assert (meta["AutomaticRotation"], meta["RotationInterval"]) == ("Enabled", "2592000s")
    assert meta["NextRotationDate"] == _iso(int(clocked.clock.now) + 30 * DAY)
    assert (meta["DeleteDate"], meta["MaterialExpireTime"], meta["DKMSInstanceId"]) == ("", "", "")
    for name in ["CreationDate", "LastRotationDate", "NextRotationDate"]:
        assert len(meta[name]) == 20 and meta[name].endswith("Z")
