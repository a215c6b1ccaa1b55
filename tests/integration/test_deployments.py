"""Several deployments on one token: each uses, lists, checks and repairs only its own objects."""

from __future__ import annotations

import uuid

from pkcs11 import KeyType

from hsmkms.hsm.pkcs11 import master_key_template
from hsmkms.service.keys import hsm_label
from tests import tokens
from tests.conftest import runtime_over, token_session

CREATE = dict(key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="Aliyun_KMS",
              protection_level="HSM", description="")


def deployment(hsm_settings, name: str, data_dir):
    backend = tokens.backend(hsm_settings, deployment=name)
    return runtime_over(hsm_settings, backend, data_dir)


def close(runtime) -> None:
    runtime.store.close()
    runtime.nonces.close()
    runtime.hsm.close()


def seal_some(runtime) -> list[tuple[str, dict, str]]:
    """Keys (one rotated), data keys and ciphertexts: (blob, context, plaintext)."""
    keys, crypto, sealed = runtime.services.keys, runtime.services.crypto, []
    for index in range(3):
        key = keys.create_key(**CREATE)
        context = {"i": str(index)}
        data_key = crypto.generate_data_key(key, 32, context)
        sealed.append((data_key.sealed.ciphertext_blob, context, data_key.plaintext_b64))
        if index == 0:
            keys.create_version(key)
        sealed.append((crypto.encrypt(key, f"message {index}", {}).ciphertext_blob, {}, f"message {index}"))
    return sealed


def test_two_deployments_share_a_token_and_repairing_one_spares_the_other(hsm_settings, hsm, tmp_path):
    run = uuid.uuid4().hex[:8]  # names of this run's own: an operator's token keeps what earlier runs left
    blue = deployment(hsm_settings, f"blue-{run}", tmp_path / "blue")
    green = deployment(hsm_settings, f"green-{run}", tmp_path / "green")
    try:
        green_blobs = seal_some(green)
        seal_some(blue)
        green_access_key, green_secret = green.services.access_keys.create("green's")
        # Blue has an orphan of its own to repair (a creation whose metadata never came).
        orphan = str(uuid.uuid4())
        blue.hsm.create_aes_key(orphan, hsm_label(str(uuid.uuid4()), orphan))

        report = blue.services.maintenance.doctor(repair=True)
        assert report.orphan_objects == [orphan] and report.repaired == [f"destroyed {orphan}"]
        green_labels = {green.hsm.namespace.cka_label(label) for label in green.hsm.list_key_ids().values()}
        assert green_labels <= set(report.foreign_objects)
        assert any("belongs to another deployment" in line for line in report.lines())
        assert not blue.hsm.has_key(orphan)

        # Every one of green's keys still decrypts, and its access keys still unseal.
        for blob, context, plaintext in green_blobs:
            assert green.services.crypto.open_blob(blob, context).plaintext == plaintext
        green.watch.invalidate()
        assert green.services.access_keys.credential(green_access_key).secret == green_secret
        green_report = green.services.maintenance.doctor()
        assert green_report.consistent, green_report.lines()
        assert blue.services.maintenance.doctor().consistent
    finally:
        close(blue)
        close(green)


def test_objects_made_before_deployments_had_names_stay_the_default_deployments(hsm_settings, hsm, tmp_path):
    """An existing token keeps every key: objects labelled and identified as hsmkms always made them belong to
    the default deployment ([hsm] deployment empty), and to no named one."""
    version_id, key_id = str(uuid.uuid4()), str(uuid.uuid4())
    label = hsm_label(key_id, version_id)
    template = master_key_template(version_id.encode(), label, hsm.profile.allowed_mechanisms)
    with token_session(hsm_settings) as session:  # made as hsmkms made objects before deployments had names
        session.generate_key(KeyType.AES, 256, store=True, template=template)
    default = tokens.backend(hsm_settings, deployment="")
    named = tokens.backend(hsm_settings, deployment="blue")
    try:
        assert default.list_key_ids()[version_id] == label
        assert default.has_key(version_id)
        sealed = default.gcm_encrypt(version_id, bytes(12), b"kept", b"")
        assert default.gcm_decrypt(version_id, bytes(12), sealed, b"") == b"kept"
        assert version_id not in named.list_key_ids() and not named.has_key(version_id)
        assert label in named.foreign_objects()
    finally:
        default.destroy_key(version_id)
        named.close()
        default.close()
