"""Key-material import (BYOK) through the official SDKs, on each test token, against a server whose clock the
test moves: the material is made and wrapped here with ``cryptography``, as a customer would."""

from __future__ import annotations

import base64
import os
import time
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from hsmkms.service.imports import ImportService
from hsmkms.service.keys import KeyService
from hsmkms.service.maintenance import Maintenance
from hsmkms.store.base import PendingObject
from tests import tokens
from tests.e2e.conftest import make_sdk
from tests.e2e.sdk import ApiError

DAY = 86400
PADDINGS = {
    "RSAES_OAEP_SHA_256": lambda: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
    "RSAES_OAEP_SHA_1": lambda: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),
    "RSAES_PKCS1_V1_5": padding.PKCS1v15,
}
# What each test token unwraps inside (SoftHSM 2.6.1 refuses OAEP with SHA-256 in C_UnwrapKey).
UNWRAPS = {"softhsm": {"RSAES_OAEP_SHA_1", "RSAES_PKCS1_V1_5"}, "nss": set(PADDINGS)}


def refused(client, action: str, **params) -> ApiError:
    with pytest.raises(ApiError) as caught:
        client.call(action, **params)
    return caught.value


def external_key(client) -> str:
    meta = client.call("CreateKey", Origin="EXTERNAL")["KeyMetadata"]
    assert (meta["Origin"], meta["KeyState"]) == ("EXTERNAL", "PendingImport")
    return meta["KeyId"]


def state(client, key_id: str) -> str:
    return client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["KeyState"]


def parameters(client, key_id: str, algorithm: str = "RSAES_OAEP_SHA_1") -> dict:
    answer = client.call("GetParametersForImport", KeyId=key_id, WrappingKeySpec="RSA_2048",
                         WrappingAlgorithm=algorithm)
    assert answer["KeyId"] == key_id and answer["TokenExpireTime"].endswith("Z")
    return answer


def import_material(client, key_id: str, material: bytes, algorithm: str = "RSAES_OAEP_SHA_1",
                    answer: dict | None = None, **extra) -> None:
    answer = answer or parameters(client, key_id, algorithm)
    public_key = serialization.load_der_public_key(base64.b64decode(answer["PublicKey"]))
    wrapped = public_key.encrypt(material, PADDINGS[algorithm]())
    client.call("ImportKeyMaterial", KeyId=key_id, ImportToken=answer["ImportToken"],
                EncryptedKeyMaterial=base64.b64encode(wrapped).decode(), **extra)


def test_import_through_a_served_endpoint(server):
    """The legacy SDK against ``hsmkms serve`` (workers, metered HSM): import, delete, re-import, decrypt."""
    client = make_sdk("legacy", server)
    key_id = external_key(client)
    material = os.urandom(32)
    import_material(client, key_id, material, KeyMaterialExpireUnix=int(time.time()) + 3600)
    blob = client.call("Encrypt", KeyId=key_id, Plaintext="YQ==")["CiphertextBlob"]
    client.call("DeleteKeyMaterial", KeyId=key_id)
    assert refused(client, "Decrypt", CiphertextBlob=blob).code == "Rejected.PendingImport"
    import_material(client, key_id, material)
    assert client.call("Decrypt", CiphertextBlob=blob)["Plaintext"] == "YQ=="


def test_import_delete_and_reimport_the_same_material(clocked, hsm, token_name):
    client = make_sdk("tea-v3", clocked)
    key_id = external_key(client)
    assert refused(client, "Encrypt", KeyId=key_id, Plaintext="YQ==").code == "Rejected.PendingImport"
    material = os.urandom(32)
    import_material(client, key_id, material)
    assert state(client, key_id) == "Enabled"
    blob = client.call("Encrypt", KeyId=key_id, Plaintext="c2VjcmV0")["CiphertextBlob"]
    assert client.call("Decrypt", CiphertextBlob=blob)["Plaintext"] == "c2VjcmV0"

    # The imported key on the token: a master key like any other (sensitive, non-extractable, GCM only).
    version_id = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["PrimaryKeyVersion"]
    info = hsm.key_info(version_id)
    # SoftHSM 2.6.1 leaves CKA_VALUE_LEN 0 on an unwrapped key; NSS says 32 bytes.
    assert info.key_bits == (0 if token_name == "softhsm" else 256)
    assert (info.sensitive, info.extractable, info.encrypt, info.decrypt) == (True, False, True, True)
    assert not any([info.wrap, info.unwrap, info.sign, info.verify, info.derive])
    assert info.allowed_mechanisms == (("AES_GCM",) if hsm.profile.allowed_mechanisms else None)

    client.call("DeleteKeyMaterial", KeyId=key_id)
    assert state(client, key_id) == "PendingImport"
    assert not hsm.has_key(version_id)
    err = refused(client, "Decrypt", CiphertextBlob=blob)
    assert (err.status, err.code) == (409, "Rejected.PendingImport")

    err = refused(client, "ImportKeyMaterial", KeyId=key_id, ImportToken=parameters(client, key_id)["ImportToken"],
                  EncryptedKeyMaterial=base64.b64encode(os.urandom(256)).decode())
    assert (err.status, err.code) == (400, "InvalidKeyMaterial")  # does not open
    different = refused_import(client, key_id, os.urandom(32))
    assert (different.status, different.code) == (400, "InvalidKeyMaterial")  # opens, but is other material
    assert state(client, key_id) == "PendingImport"

    import_material(client, key_id, material)
    assert client.call("Decrypt", CiphertextBlob=blob)["Plaintext"] == "c2VjcmV0"
    # Present material: a re-import of the same material is accepted, of other material refused.
    import_material(client, key_id, material)
    assert refused_import(client, key_id, os.urandom(32)).code == "InvalidKeyMaterial"
    assert client.call("Decrypt", CiphertextBlob=blob)["Plaintext"] == "c2VjcmV0"


def refused_import(client, key_id: str, material: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        import_material(client, key_id, material)
    return caught.value


@pytest.mark.parametrize("algorithm", sorted(PADDINGS))
def test_each_wrapping_algorithm_the_token_unwraps(clocked, algorithm, token_name):
    client = make_sdk("tea-v3", clocked)
    key_id = external_key(client)
    if algorithm not in UNWRAPS.get(token_name, {algorithm}):
        err = refused(client, "GetParametersForImport", KeyId=key_id, WrappingKeySpec="RSA_2048",
                      WrappingAlgorithm=algorithm)
        assert (err.status, err.code) == (400, "InvalidParameter") and "cannot unwrap" in err.message
        return
    material = os.urandom(32)
    import_material(client, key_id, material, algorithm)
    blob = client.call("Encrypt", KeyId=key_id, Plaintext="YQ==")["CiphertextBlob"]
    assert client.call("Decrypt", CiphertextBlob=blob)["Plaintext"] == "YQ=="


def test_tokens_expire_and_material_expires(clocked, hsm):
    client = make_sdk("tea-v3", clocked)
    maintenance = clocked.runtime.services.maintenance
    key_id = external_key(client)
    answer = parameters(client, key_id)
    wrapping_id = clocked.runtime.store.get_import_token(answer["ImportToken"]).wrapping_id
    info = hsm.wrapping_key_info(wrapping_id)
    assert (info.sensitive, info.extractable, info.unwrap, info.decrypt, info.sign) == (True, False, True, False,
                                                                                         False)
    # A token is bound to its key.
    other = external_key(client)
    err = refused(client, "ImportKeyMaterial", KeyId=other, ImportToken=answer["ImportToken"],
                  EncryptedKeyMaterial=base64.b64encode(os.urandom(256)).decode())
    assert (err.status, err.code) == (400, "InvalidImportToken")
    err = refused(client, "ImportKeyMaterial", KeyId=key_id, ImportToken="forged",
                  EncryptedKeyMaterial=base64.b64encode(os.urandom(256)).decode())
    assert (err.status, err.code) == (400, "InvalidImportToken")
    past = int(clocked.clock()) - 1
    with pytest.raises(ApiError) as caught:
        import_material(client, key_id, os.urandom(32), KeyMaterialExpireUnix=past)
    assert caught.value.code == "InvalidParameter"

    clocked.clock.advance(DAY + 1)
    with pytest.raises(ApiError) as caught:
        import_material(client, key_id, os.urandom(32), answer=answer)
    assert (caught.value.status, caught.value.code) == (400, "ExpiredImportToken")
    maintenance.run_once()
    assert wrapping_id not in hsm.list_wrapping_key_ids()  # destroyed with its token

    material = os.urandom(32)
    import_material(client, key_id, material, KeyMaterialExpireUnix=int(clocked.clock()) + 3600)
    blob = client.call("Encrypt", KeyId=key_id, Plaintext="YQ==")["CiphertextBlob"]
    meta = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]
    expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(clocked.clock()) + 3600))
    assert meta["MaterialExpireTime"] == expected
    maintenance.run_once()
    assert state(client, key_id) == "Enabled"
    clocked.clock.advance(3601)
    maintenance.run_once()
    assert state(client, key_id) == "PendingImport"
    assert refused(client, "Decrypt", CiphertextBlob=blob).code == "Rejected.PendingImport"
    import_material(client, key_id, material)
    assert client.call("Decrypt", CiphertextBlob=blob)["Plaintext"] == "YQ=="


def test_import_errors(clocked):
    client = make_sdk("tea-v3", clocked)
    native = client.call("CreateKey")["KeyMetadata"]["KeyId"]
    err = refused(client, "GetParametersForImport", KeyId=native, WrappingKeySpec="RSA_2048",
                  WrappingAlgorithm="RSAES_OAEP_SHA_1")
    assert (err.status, err.code) == (400, "Unsupported.Origin")
    assert refused(client, "DeleteKeyMaterial", KeyId=native).code == "Unsupported.Origin"
    assert refused(client, "CreateKey", Origin="Other").code == "InvalidParameter"
    assert refused(client, "CreateKey", Origin="EXTERNAL", EnableAutomaticRotation=True,
                   RotationInterval="30d").code == "InvalidParameter"
    key_id = external_key(client)
    for spec, algorithm in [("EC_SM2", "SM2PKE"), ("RSA_3072", "RSAES_OAEP_SHA_1"), ("RSA_2048", "SM2PKE")]:
        err = refused(client, "GetParametersForImport", KeyId=key_id, WrappingKeySpec=spec,
                      WrappingAlgorithm=algorithm)
        assert (err.status, err.code) == (400, "InvalidParameter")
    answer = parameters(client, key_id)
    err = refused(client, "ImportKeyMaterial", KeyId=key_id, ImportToken=answer["ImportToken"],
                  EncryptedKeyMaterial="not base64!")
    assert (err.status, err.code) == (400, "InvalidParameter")
    import_material(client, key_id, os.urandom(32))
    err = refused(client, "CreateKeyVersion", KeyId=key_id)
    assert (err.status, err.code) == (400, "Rejected.UnsupportedOperation")
    err = refused(client, "UpdateRotationPolicy", KeyId=key_id, EnableAutomaticRotation=True,
                  RotationInterval="30d")
    assert err.code == "Rejected.UnsupportedOperation"
    client.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    assert refused_import(client, key_id, os.urandom(32)).code == "Rejected.StateModifiedFailed"
    client.call("DeleteKeyMaterial", KeyId=key_id)
    assert state(client, key_id) == "PendingDeletion"  # kept


def test_doctor_knows_wrapping_keys(clocked, hsm_settings):
    """Through a deployment of its own on the test token, so that repairing destroys only this test's objects."""
    runtime = clocked.runtime
    own = tokens.backend(hsm_settings, deployment="import-doctor")
    try:
        keys = KeyService(runtime.store, own, runtime.services.keys.identity, runtime.services.keys.watch,
                          clocked.clock)
        key = keys.create_key(key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="EXTERNAL",
                              protection_level="HSM", description="")
        maintenance = Maintenance(keys)
        live = ImportService(keys).parameters(key, "RSA_2048", "RSAES_OAEP_SHA_1")
        live_wrapping_id = runtime.store.get_import_token(live.import_token).wrapping_id
        stray = str(uuid.uuid4())
        own.create_wrapping_key_pair(stray, f"hsmkms:import:{key.key_id}:{stray}")  # as a crash would leave it
        report = maintenance.doctor()
        assert report.orphan_wrapping_keys == [stray] and not report.consistent
        assert f"orphan import wrapping key {stray} (no import token names it)" in report.lines()
        assert key.primary_version_id not in report.missing_objects  # no material yet: no object, by design
        assert f"destroyed {stray}" in maintenance.doctor(repair=True).repaired
        assert set(own.list_wrapping_key_ids()) == {live_wrapping_id}
        assert maintenance.doctor().orphan_wrapping_keys == []
    finally:
        for wrapping_id in own.list_wrapping_key_ids():
            own.destroy_wrapping_key(wrapping_id)
        own.close()


def test_an_import_under_way_refuses_another(clocked):
    """Two imports (or an import and a deletion) of one key's material at once: the second is refused."""
    client = make_sdk("tea-v3", clocked)
    store = clocked.runtime.store
    key_id = external_key(client)
    version_id = client.call("DescribeKey", KeyId=key_id)["KeyMetadata"]["PrimaryKeyVersion"]
    store.begin_object(PendingObject(version_id, key_id, "create", int(clocked.clock())))  # the other import
    err = refused_import(client, key_id, os.urandom(32))
    assert (err.status, err.code) == (409, "Rejected.StateModifiedFailed")
    store.finish_object(version_id)
    material = os.urandom(32)
    import_material(client, key_id, material)
    store.begin_object(PendingObject(version_id, key_id, "create", int(clocked.clock())))
    assert refused(client, "DeleteKeyMaterial", KeyId=key_id).code == "Rejected.StateModifiedFailed"
    assert state(client, key_id) == "Enabled"
    store.finish_object(version_id)
    client.call("DeleteKeyMaterial", KeyId=key_id)
    assert state(client, key_id) == "PendingImport"


def test_recovery_rolls_back_an_interrupted_wrapping_key(clocked, hsm):
    """A crash between journalling a wrapping key pair and recording its token: recovery destroys the pair."""
    store, maintenance = clocked.runtime.store, clocked.runtime.services.maintenance
    key_id = external_key(make_sdk("tea-v3", clocked))
    wrapping_id = str(uuid.uuid4())
    store.begin_object(PendingObject(wrapping_id, key_id, "create", int(clocked.clock())))
    hsm.create_wrapping_key_pair(wrapping_id, f"hsmkms:import:{key_id}:{wrapping_id}")
    report = maintenance.doctor()  # the shared test token may hold other tests' objects: look at this one
    assert wrapping_id not in report.orphan_wrapping_keys and wrapping_id in report.interrupted
    clocked.clock.advance(3600)
    assert wrapping_id in maintenance.finish_interrupted()
    assert wrapping_id not in hsm.list_wrapping_key_ids()
    assert wrapping_id not in {p.object_id for p in store.pending_objects()}
