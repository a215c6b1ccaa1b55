"""Token profiles and how PKCS#11 failures are classified: a failed tag check is the caller's fault, a refusal
is a configuration error that keeps the session, anything else is a fault of the HSM."""

from __future__ import annotations

import dataclasses
import logging
import uuid

import pytest
from pkcs11 import exceptions as p11

from hsmkms.hsm.backend import DecryptionFailed, HsmConfigurationError, HsmUnavailable
from hsmkms.hsm.pkcs11 import Pkcs11Backend, native
from hsmkms.hsm.profiles import GENERIC, NSS, SOFTHSM, profile_for
from tests import hsm_double, tokens


def test_profiles_by_module_file_name():
    assert profile_for("/usr/lib/softhsm/libsofthsm2.so") is SOFTHSM
    assert profile_for("/usr/lib/x86_64-linux-gnu/libsoftokn3.so") is NSS
    assert profile_for("/opt/safenet/lunaclient/lib/libCryptoki2_64.so") is GENERIC
    assert profile_for("/usr/lib/softhsm/libsofthsm2.so", "generic") is GENERIC


@pytest.fixture
def open_backend(hsm_settings, hsm, monkeypatch):
    """A backend over the test token whose profile is the token's with ``changes``, and whose module answers as
    the test says."""
    double = hsm_double.install(monkeypatch, hsm_settings)
    made = []

    def make(**changes):
        backend = tokens.backend(hsm_settings, wait_seconds=2,
                                 profile=dataclasses.replace(hsm_settings.hsm_profile, **changes))
        backend.open()
        made.append(backend)
        object_id = str(uuid.uuid4())
        backend.create_aes_key(object_id, f"hsmkms:cmk:test:{object_id}")
        return backend, object_id

    yield make, double
    for backend in made:
        backend.close()


def test_general_error_is_a_tag_mismatch_only_on_softhsm():
    assert [p.name for p in (SOFTHSM, NSS, GENERIC) if p.general_error_is_tag_mismatch] == ["softhsm"]


@pytest.mark.parametrize("tag_mismatch, expected", [(True, DecryptionFailed), (False, HsmUnavailable)])
def test_general_error_from_decrypt_follows_the_profile(open_backend, tag_mismatch, expected):
    make, double = open_backend
    backend, object_id = make(general_error_is_tag_mismatch=tag_mismatch)
    double.decrypt_error = p11.GeneralError()
    with pytest.raises(expected):
        backend.gcm_decrypt(object_id, bytes(12), bytes(32), b"")


@pytest.mark.parametrize("error", [p11.EncryptedDataInvalid(), native.AeadDecryptFailed()])
def test_encrypted_data_invalid_is_a_tag_mismatch_on_every_profile(open_backend, error):
    make, double = open_backend
    for tag_mismatch in (True, False):
        backend, object_id = make(general_error_is_tag_mismatch=tag_mismatch)
        double.decrypt_error = error
        with pytest.raises(DecryptionFailed):
            backend.gcm_decrypt(object_id, bytes(12), bytes(32), b"")


@pytest.mark.parametrize("error", [p11.MechanismInvalid(), p11.MechanismParamInvalid(), p11.TemplateInconsistent(),
                                   p11.AttributeValueInvalid(), native.KeyFunctionNotPermitted()])
def test_a_refusal_is_a_configuration_error_and_keeps_the_session(open_backend, error, caplog):
    make, double = open_backend
    backend, object_id = make()
    session = backend._session
    double.encrypt_error = error
    with caplog.at_level(logging.ERROR, logger="hsmkms.hsm"), pytest.raises(HsmConfigurationError):
        backend.gcm_encrypt(object_id, bytes(12), b"data", b"")
    assert backend._session is session  # not torn down
    assert "configuration error" in caplog.text and type(error).__name__ in caplog.text
    double.encrypt_error = None
    sealed = backend.gcm_encrypt(object_id, bytes(12), b"data", b"")
    assert backend.gcm_decrypt(object_id, bytes(12), sealed, b"") == b"data"


def test_a_device_error_tears_the_session_down(open_backend):
    make, double = open_backend
    backend, object_id = make()
    session = backend._session
    double.encrypt_error = p11.DeviceError()
    with pytest.raises(HsmUnavailable):
        backend.gcm_encrypt(object_id, bytes(12), b"data", b"")
    assert backend._session is not session


def test_only_the_softhsm_profile_takes_the_file_lock(hsm_settings, tmp_path):
    for profile, locked in [(SOFTHSM, True), (NSS, False), (GENERIC, False)]:
        backend = Pkcs11Backend(hsm_settings.module, hsm_settings.token_label, hsm_settings.read_pin,
                                lock_path=tmp_path / "hsm.lock", profile=profile)
        assert (backend._lock_path is not None) == locked
