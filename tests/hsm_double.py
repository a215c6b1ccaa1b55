"""A test double at hsmkms's PKCS#11 boundary: the process's real module (``native.Module``) with answers a
test replaces.  Initialising and finalising are no-ops, since the real module is shared by every test of the
process; python-pkcs11's objects (``lib``) are the real ones."""

from __future__ import annotations

from pkcs11 import exceptions as p11

import hsmkms.hsm.pkcs11.backend as backend_module
from hsmkms.hsm.pkcs11 import native


class ModuleDouble:
    initialised_here = True

    def __init__(self, real: native.Module):
        self.real = real
        self.lib = real.lib
        self.encrypt_error: Exception | None = None  # raised by the next gcm_encrypt calls
        self.decrypt_error: Exception | None = None

    def __getattr__(self, name):  # everything not replaced here is the real module's
        return getattr(self.real, name)

    def initialize(self) -> None:
        pass

    def acquire(self, user) -> None:
        pass

    def release(self, user) -> None:
        pass

    def finalize(self) -> None:
        pass

    def gcm_encrypt(self, *args):
        if self.encrypt_error is not None:
            raise self.encrypt_error
        return self.real.gcm_encrypt(*args)

    def gcm_decrypt(self, *args):
        if self.decrypt_error is not None:
            raise self.decrypt_error
        return self.real.gcm_decrypt(*args)


class TokenWithoutGcm(ModuleDouble):
    """A token that does not offer CKM_AES_GCM (as openCryptoki 3.8 or YubiHSM 2): C_GetMechanismInfo answers
    CKR_MECHANISM_INVALID for it, and so does C_EncryptInit."""

    def mechanism_info(self, slot_id, mechanism):
        if mechanism == native.CKM_AES_GCM:
            raise p11.MechanismInvalid("C_GetMechanismInfo answered CKR 0x70")
        return self.real.mechanism_info(slot_id, mechanism)

    def gcm_encrypt(self, *args):
        raise p11.MechanismInvalid("C_EncryptInit answered CKR 0x70")

    def gcm_decrypt(self, *args):
        raise p11.MechanismInvalid("C_DecryptInit answered CKR 0x70")


def install(monkeypatch, settings, double_class=ModuleDouble):
    """Make every backend made from now on (in this test) load the double instead of the module."""
    double = double_class(backend_module._library(settings.module, settings.init_reserved or None))
    monkeypatch.setattr(backend_module, "_library", lambda path, reserved=None: double)
    return double
