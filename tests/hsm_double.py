"""A test double at hsmkms's PKCS#11 boundary: the process's real module (``native.Module``) with answers a
test replaces.  Initialising and finalising are no-ops, since the real module is shared by every test of the
process; python-pkcs11's objects (``lib``) are the real ones."""

from __future__ import annotations

import ctypes
import os

from pkcs11 import Mechanism
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


class TokenWithoutEcdsa(ModuleDouble):
    """A token that offers everything hsmkms needs but not CKM_ECDSA (C_GetMechanismInfo: CKR_MECHANISM_INVALID)."""

    def mechanism_info(self, slot_id, mechanism):
        if mechanism == Mechanism.ECDSA:
            raise p11.MechanismInvalid("C_GetMechanismInfo answered CKR 0x70")
        return self.real.mechanism_info(slot_id, mechanism)


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


class _GcmParamsRaw(ctypes.Structure):
    """CK_GCM_PARAMS as a module sees it: pIv as an address it may write to."""

    _fields_ = [("pIv", ctypes.c_void_p), ("ulIvLen", native.CK_ULONG), ("ulIvBits", native.CK_ULONG),
                ("pAAD", ctypes.c_void_p), ("ulAADLen", native.CK_ULONG), ("ulTagBits", native.CK_ULONG)]


CKR_MECHANISM_PARAM_INVALID = 0x71


class TokenMakingIvs(ModuleDouble):
    """A token that makes every GCM IV itself and refuses one from the caller, as vendors document, in place
    of the module's C_EncryptInit and C_Encrypt (called through ctypes like the real functions):

    - ``cloudhsm`` (AWS CloudHSM, PKCS#11 library): pIv must be a 12-byte buffer, which the token fills with the
      IV it made; an IV already in it is ignored ("the HSM ignores the IV in the request and uses an IV that it
      generates. The HSM writes the generated IV to the memory reference pointed to by the pIV element").
    - ``luna`` (Thales Luna 7 in FIPS mode): no IV may be given (ulIvLen 0, ulIvBits 96 makes a 96-bit IV; any
      other is CKR_MECHANISM_PARAM_INVALID); the IV follows ciphertext and tag in C_Encrypt's output, which
      must have room for it (else CKR_BUFFER_TOO_SMALL with the length needed, the operation kept).

    The cryptography is the real token's, with the IV the double made.  Decryption is the real token's.
    """

    def __init__(self, real: native.Module, vendor: str):
        super().__init__(real)
        self.vendor = vendor
        self.ivs_made: list[bytes] = []
        self._pending: dict[int, bytes] = {}  # session -> IV of the operation under way
        # C functions in place of the module's: hsmkms's own code (native.Module) calls them through ctypes.
        init_type = ctypes.CFUNCTYPE(native.CK_RV, native.CK_ULONG, ctypes.POINTER(native._Mechanism),
                                     native.CK_ULONG)
        encrypt_type = ctypes.CFUNCTYPE(native.CK_RV, native.CK_ULONG, ctypes.c_void_p, native.CK_ULONG,
                                        ctypes.c_void_p, ctypes.POINTER(native.CK_ULONG))
        self._encrypt_init = init_type(self._c_encrypt_init)
        self._encrypt = encrypt_type(self._c_encrypt)

    # hsmkms's own code (native.Module's methods) over the double's C functions
    gcm_encrypt = native.Module.gcm_encrypt
    gcm_encrypt_token_iv = native.Module.gcm_encrypt_token_iv
    caller_iv_ignored = native.Module.caller_iv_ignored

    def _c_encrypt_init(self, session, mechanism, key):
        params = ctypes.cast(mechanism.contents.pParameter, ctypes.POINTER(_GcmParamsRaw)).contents
        if self.vendor == "cloudhsm":
            if params.ulIvLen != 12 or not params.pIv:
                return CKR_MECHANISM_PARAM_INVALID
        elif params.ulIvLen != 0 or params.ulIvBits != 96:
            return CKR_MECHANISM_PARAM_INVALID
        iv = os.urandom(12)
        if self.vendor == "cloudhsm":
            ctypes.memmove(params.pIv, iv, 12)
        aad = ctypes.string_at(params.pAAD, params.ulAADLen) if params.ulAADLen else b""
        try:
            native.Module._init(self.real._encrypt_init, session, key, iv, aad, "C_EncryptInit")
        except p11.PKCS11Error:
            return 0x5
        self._pending[session] = iv
        self.ivs_made.append(iv)
        return 0

    def _c_encrypt(self, session, data, data_len, output, output_len):
        iv = self._pending[session]
        needed = data_len + 16 + (len(iv) if self.vendor == "luna" else 0)
        if output_len.contents.value < needed:
            output_len.contents.value = needed
            return native.CKR_BUFFER_TOO_SMALL
        sealed = native.Module._run(self.real._encrypt, session, ctypes.string_at(data, data_len), data_len + 16,
                                    "C_Encrypt")
        result = sealed + (iv if self.vendor == "luna" else b"")
        ctypes.memmove(output, result, len(result))
        output_len.contents.value = len(result)
        del self._pending[session]
        return 0
