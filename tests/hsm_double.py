"""A test double at hsmkms's PKCS#11 boundary: the process's real module (``native.Module``) with answers a
test replaces.  Initialising and finalising are no-ops, since the real module is shared by every test of the
process; python-pkcs11's objects (``lib``) are the real ones."""

from __future__ import annotations

import hsmkms.hsm.pkcs11.backend as backend_module
from hsmkms.hsm.pkcs11 import native


class ModuleDouble:
    initialised_here = True

    def __init__(self, real: native.Module):
        self.real = real
        self.lib = real.lib
        self.encrypt_error: Exception | None = None  # raised by the next gcm_encrypt calls
        self.decrypt_error: Exception | None = None

    def initialize(self) -> None:
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


def install(monkeypatch, settings, double_class=ModuleDouble):
    """Make every backend made from now on (in this test) load the double instead of the module."""
    double = double_class(backend_module._library(settings.module, settings.init_reserved or None))
    monkeypatch.setattr(backend_module, "_library", lambda path, reserved=None: double)
    return double
