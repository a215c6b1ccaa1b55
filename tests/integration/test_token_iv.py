"""[hsm] gcm_iv = "token": the token makes every GCM IV.  No token here does, so a test double at the PKCS#11
boundary (tests/hsm_double.py, TokenMakingIvs) plays AWS CloudHSM and Thales Luna in FIPS mode as their
documentation describes them, over the real token's cryptography."""

from __future__ import annotations

import base64
import dataclasses
import uuid

import pytest

from hsmkms.app import build_runtime, readiness
from hsmkms.hsm.backend import HsmConfigurationError
from hsmkms.hsm.pkcs11 import native
from hsmkms.service import blob
from tests import hsm_double, tokens

VENDORS = {"cloudhsm": native.TOKEN_IV_WRITTEN, "luna": native.TOKEN_IV_APPENDED}
CREATE = dict(key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="Aliyun_KMS",
              protection_level="HSM", description="")


def install_vendor(monkeypatch, settings, vendor: str) -> hsm_double.TokenMakingIvs:
    return hsm_double.install(monkeypatch, settings, lambda real: hsm_double.TokenMakingIvs(real, vendor))


@pytest.fixture
def opened(hsm_settings, hsm):
    made = []

    def open_backend(**options):
        backend = tokens.backend(hsm_settings, **options)
        backend.open()
        made.append(backend)
        object_id = str(uuid.uuid4())
        backend.create_aes_key(object_id, f"hsmkms:cmk:test:{object_id}")
        return backend, object_id

    yield open_backend
    for backend in made:
        backend.close()


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_iv_the_token_made_is_read_back(vendor, hsm_settings, monkeypatch, opened):
    double = install_vendor(monkeypatch, hsm_settings, vendor)
    backend, object_id = opened(gcm_iv="token")
    iv, sealed = backend.gcm_encrypt_token_iv(object_id, b"data key", b'{"a":"1"}')
    assert iv == double.ivs_made[-1] and len(iv) == 12
    assert len(sealed) == len(b"data key") + 16
    assert backend.gcm_decrypt(object_id, iv, sealed, b'{"a":"1"}') == b"data key"
    assert backend._token_iv_style == VENDORS[vendor]
    again, _ = backend.gcm_encrypt_token_iv(object_id, b"data key", b'{"a":"1"}')
    assert again != iv  # a new IV for every encryption


@pytest.mark.parametrize("vendor, why", [("cloudhsm", "it did not use the IV it was given"),
                                         ("luna", "it refused the IV it was given")])
def test_host_mode_is_refused_at_start_on_a_token_that_makes_its_own_ivs(vendor, why, hsm_settings, monkeypatch):
    """CloudHSM would seal under its own IV while the blob records the host's: nothing could be decrypted."""
    install_vendor(monkeypatch, hsm_settings, vendor)
    backend = tokens.backend(hsm_settings)  # gcm_iv = "host"
    with pytest.raises(HsmConfigurationError) as refused:
        backend.open()
    assert why in str(refused.value) and 'set [hsm] gcm_iv = "token"' in str(refused.value)


def test_a_token_that_makes_no_iv_is_refused_in_token_mode(opened):
    """SoftHSM and NSS take the zeroed pIv as the caller's IV: the output (under a fixed IV) is thrown away."""
    backend, object_id = opened(gcm_iv="token")
    with pytest.raises(HsmConfigurationError, match='makes no GCM IV.*gcm_iv = "host"'):
        backend.gcm_encrypt_token_iv(object_id, b"data key", b"")


@pytest.mark.parametrize("vendor", VENDORS)
def test_service_in_token_mode_makes_format_2_blobs_and_reads_format_1(vendor, hsm_settings, hsm, monkeypatch,
                                                                       tmp_path):
    base = dataclasses.replace(hsm_settings, data_dir=tmp_path, softhsm_token_dir=None)
    host_mode = build_runtime(base)  # the deployment before the switch: format 1 blobs
    host_mode.store.migrate()
    host_mode.services.access_keys.ensure_service_key()
    key = host_mode.services.keys.create_key(**CREATE)
    old_blob = host_mode.services.crypto.encrypt(key, "sealed in host mode", {"k": "v"}).ciphertext_blob
    old_access_key, old_secret = host_mode.services.access_keys.create()
    host_mode.close()
    assert base64.b64decode(old_blob)[0] in b"0123456789abcdef"

    install_vendor(monkeypatch, hsm_settings, vendor)
    runtime = build_runtime(dataclasses.replace(base, gcm_iv="token"))
    try:
        crypto, access_keys = runtime.services.crypto, runtime.services.access_keys
        data_key = crypto.generate_data_key(key, 32, {"app": "x"})
        raw = base64.b64decode(data_key.sealed.ciphertext_blob)
        assert raw[0] == blob.FORMAT_2 and raw[37] == 12
        assert crypto.open_blob(data_key.sealed.ciphertext_blob, {"app": "x"}).plaintext == data_key.plaintext_b64
        assert crypto.open_blob(old_blob, {"k": "v"}).plaintext == "sealed in host mode"  # format 1, forever
        moved = crypto.re_encrypt(crypto.locate(old_blob), {"k": "v"}, key, {})
        assert crypto.open_blob(moved.ciphertext_blob, {}).plaintext == "sealed in host mode"
        new_access_key, new_secret = access_keys.create()
        assert access_keys.credential(new_access_key).secret == new_secret
        assert access_keys.credential(old_access_key).secret == old_secret
        assert readiness(runtime)[0]  # the canary in token mode too
    finally:
        runtime.close()
