"""Start-up checks of what the token offers, and readiness as a real GCM round trip."""

from __future__ import annotations

import dataclasses

import pytest
from pkcs11 import exceptions as p11

import hsmkms.hsm.pkcs11.backend as backend_module
from hsmkms.app import readiness
from hsmkms.hsm.backend import HsmConfigurationError, HsmUnavailable
from hsmkms.server import preflight
from hsmkms.service.access_keys import SERVICE_KEY_ID
from tests import hsm_double, tokens
from tests.conftest import runtime_over


class CountingModule(hsm_double.ModuleDouble):
    def __init__(self, real):
        super().__init__(real)
        self.encrypts = 0

    def gcm_encrypt(self, *args):
        self.encrypts += 1
        return super().gcm_encrypt(*args)


def test_a_token_without_gcm_is_refused_at_start_with_what_to_do(hsm_settings, hsm, monkeypatch):
    hsm_double.install(monkeypatch, hsm_settings, hsm_double.TokenWithoutGcm)
    backend = tokens.backend(hsm_settings)
    with pytest.raises(HsmConfigurationError) as refused:
        backend.open()
    message = str(refused.value)
    assert "CKM_AES_GCM is not offered" in message
    assert repr(hsm_settings.token_label) in message and hsm_settings.module in message
    assert "Use a token or HSM partition that offers it" in message and "hsmkms hsm check" in message
    assert "CKM_AES_KEY_GEN" not in message  # what the token has is not reported as missing


def test_serve_refuses_a_token_without_gcm_before_forking_workers(hsm_settings, hsm, monkeypatch, tmp_path):
    hsm_double.install(monkeypatch, hsm_settings, hsm_double.TokenWithoutGcm)
    settings = dataclasses.replace(hsm_settings, data_dir=tmp_path, softhsm_token_dir=None)
    with pytest.raises(HsmConfigurationError, match="CKM_AES_GCM"):
        preflight(settings)


def test_both_tokens_offer_what_hsmkms_needs(hsm, hsm_settings):
    module = backend_module._library(hsm_settings.module, hsm_settings.init_reserved or None)
    slot_id = module.lib.get_token(token_label=hsm_settings.token_label).slot.slot_id
    assert backend_module.unmet_requirements(module, slot_id) == []


def test_readiness_is_a_real_gcm_round_trip_cached_for_5_s(hsm_settings, hsm, monkeypatch, tmp_path):
    double = hsm_double.install(monkeypatch, hsm_settings, CountingModule)
    backend = tokens.backend(hsm_settings)
    runtime = runtime_over(hsm_settings, backend, tmp_path)  # makes the service key, the canary
    try:
        assert readiness(runtime)[0]
        assert readiness(runtime)[0]
        assert double.encrypts == 1  # the second answer came from the cache
        monkeypatch.setattr(backend_module, "READINESS_CACHE_S", 0.0)
        assert readiness(runtime)[0] and double.encrypts == 2
        # The RNG answers and the canary object is there, but GCM fails: not ready.
        double.encrypt_error = p11.MechanismInvalid()
        ready, body = readiness(runtime)
        assert not ready and body == b'{"hsm":false,"store":true,"nonces":true}'
        double.encrypt_error = None
        assert readiness(runtime)[0]
        double.decrypt_error = p11.GeneralError()  # a failed tag check (softhsm) or a device fault: not ready
        assert not backend.ping(SERVICE_KEY_ID)
    finally:
        runtime.store.close()
        runtime.nonces.close()
        backend.close()


def test_a_fault_forgets_the_cached_readiness(hsm_settings, hsm, monkeypatch, tmp_path):
    double = hsm_double.install(monkeypatch, hsm_settings)
    backend = tokens.backend(hsm_settings, wait_seconds=2)
    runtime = runtime_over(hsm_settings, backend, tmp_path)
    try:
        assert backend.ping(SERVICE_KEY_ID)
        double.encrypt_error = p11.DeviceRemoved()
        with pytest.raises(HsmUnavailable):  # a request meets the fault first
            runtime.services.crypto.encrypt(runtime.services.keys.create_key(
                key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="Aliyun_KMS",
                protection_level="HSM", description=""), "x", {})
        assert not backend.ping(SERVICE_KEY_ID)  # within 5 s of the last success, yet asked again
    finally:
        runtime.store.close()
        runtime.nonces.close()
        backend.close()
