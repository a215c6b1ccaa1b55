"""hsmkms's own narrow path into a PKCS#11 module, through ctypes, for what python-pkcs11 cannot do.

- **C_Initialize with arguments.** python-pkcs11 0.10.1 always calls ``C_Initialize(NULL)``.  NSS softoken needs
  its database folder in the arguments' reserved field, and a forked child must initialise without relying on
  C_Finalize of the state it inherited (openCryptoki answers it CKR_CRYPTOKI_NOT_INITIALIZED).  So hsmkms
  initialises and finalises every module itself, and python-pkcs11's ``lib`` object is made over the same
  loaded module without its own C_Initialize (see ``Module``).
- **AES-GCM with an output buffer of the right size.**  python-pkcs11 asks the module for the output length
  first (``C_Encrypt(NULL)``) and copies through an 8 KiB buffer; NSS softoken answers that query in a way
  python-pkcs11 misreads ("Buffer was too small") and leaves the operation active.  ``gcm_encrypt`` and
  ``gcm_decrypt`` call C_EncryptInit/C_Encrypt (C_DecryptInit/C_Decrypt) with the exact length, on the session
  and key handles python-pkcs11 exposes.
- **C_InitToken**, which python-pkcs11 does not wrap.

Failures are raised as python-pkcs11's exception classes, so that the backend classifies them in one place.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

from pkcs11 import _pkcs11
from pkcs11 import exceptions as p11

CK_ULONG = ctypes.c_ulong
CK_RV = CK_ULONG
_P_ULONG = ctypes.POINTER(CK_ULONG)

CKR_OK = 0x0
CKR_BUFFER_TOO_SMALL = 0x150
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2
CKM_AES_GCM = 0x1087
GCM_TAG_BYTES = 16
# When the token makes the GCM IV ([hsm] gcm_iv = "token"), vendors hand it back in one of two ways:
TOKEN_IV_WRITTEN = "written"  # AWS CloudHSM: the token writes the IV it made into pIv (a 12-byte buffer)
TOKEN_IV_APPENDED = "appended"  # Thales Luna in FIPS mode: no IV is given (ulIvLen 0, ulIvBits 96), and the
#                                 token appends its IV (12 bytes, or 16 before firmware 7.9.3) to ciphertext || tag
TOKEN_IV_STYLES = (TOKEN_IV_WRITTEN, TOKEN_IV_APPENDED)
TOKEN_IV_BYTES = 12
TOKEN_IV_LENGTHS = (12, 16)

# The PKCS#11 2.40 function list, in its order (the version field comes first).
_FUNCTIONS = """
    Initialize Finalize GetInfo GetFunctionList GetSlotList GetSlotInfo GetTokenInfo GetMechanismList
    GetMechanismInfo InitToken InitPIN SetPIN OpenSession CloseSession CloseAllSessions GetSessionInfo
    GetOperationState SetOperationState Login Logout CreateObject CopyObject DestroyObject GetObjectSize
    GetAttributeValue SetAttributeValue FindObjectsInit FindObjects FindObjectsFinal EncryptInit Encrypt
    EncryptUpdate EncryptFinal DecryptInit Decrypt DecryptUpdate DecryptFinal DigestInit Digest DigestUpdate
    DigestKey DigestFinal SignInit Sign SignUpdate SignFinal SignRecoverInit SignRecover VerifyInit Verify
    VerifyUpdate VerifyFinal VerifyRecoverInit VerifyRecover DigestEncryptUpdate DecryptDigestUpdate
    SignEncryptUpdate DecryptVerifyUpdate GenerateKey GenerateKeyPair WrapKey UnwrapKey DeriveKey SeedRandom
    GenerateRandom GetFunctionStatus CancelFunction WaitForSlotEvent
""".split()


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _Version)] + [(name, ctypes.c_void_p) for name in _FUNCTIONS]


class _InitArgs(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p), ("UnlockMutex", ctypes.c_void_p),
                ("flags", CK_ULONG), ("pReserved", ctypes.c_char_p)]


class _Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", CK_ULONG)]


class _GcmParams(ctypes.Structure):
    _fields_ = [("pIv", ctypes.c_char_p), ("ulIvLen", CK_ULONG), ("ulIvBits", CK_ULONG),
                ("pAAD", ctypes.c_char_p), ("ulAADLen", CK_ULONG), ("ulTagBits", CK_ULONG)]


class _MechanismInfo(ctypes.Structure):
    _fields_ = [("ulMinKeySize", CK_ULONG), ("ulMaxKeySize", CK_ULONG), ("flags", CK_ULONG)]


_GCM_PARAMS_SIZE = ctypes.sizeof(_GcmParams)

_PROTOTYPES = {
    "Initialize": (ctypes.c_void_p,),
    "Finalize": (ctypes.c_void_p,),
    "InitToken": (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p),
    "GetMechanismInfo": (CK_ULONG, CK_ULONG, ctypes.POINTER(_MechanismInfo)),
    "EncryptInit": (CK_ULONG, ctypes.POINTER(_Mechanism), CK_ULONG),
    "Encrypt": (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p, _P_ULONG),
    "DecryptInit": (CK_ULONG, ctypes.POINTER(_Mechanism), CK_ULONG),
    "Decrypt": (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p, _P_ULONG),
}


@dataclass(frozen=True)
class MechanismInfo:
    min_key_size: int
    max_key_size: int
    flags: int


class KeyFunctionNotPermitted(p11.PKCS11Error):
    """CKR_KEY_FUNCTION_NOT_PERMITTED, which python-pkcs11 has no class for."""


class AeadDecryptFailed(p11.PKCS11Error):
    """CKR_AEAD_DECRYPT_FAILED (PKCS#11 3.0): the tag did not verify."""


# Return values the calls here can meet, as python-pkcs11's exception classes.
_ERRORS: dict[int, type[p11.PKCS11Error]] = {
    0x02: p11.HostMemory, 0x05: p11.GeneralError, 0x06: p11.FunctionFailed, 0x07: p11.ArgumentsBad,
    0x20: p11.DataInvalid, 0x21: p11.DataLenRange, 0x30: p11.DeviceError, 0x31: p11.DeviceMemory,
    0x32: p11.DeviceRemoved, 0x40: p11.EncryptedDataInvalid, 0x41: p11.EncryptedDataLenRange, 0x42: AeadDecryptFailed,
    0x54: p11.FunctionNotSupported, 0x60: p11.KeyHandleInvalid, 0x62: p11.KeySizeRange,
    0x63: p11.KeyTypeInconsistent, 0x68: KeyFunctionNotPermitted, 0x70: p11.MechanismInvalid,
    0x71: p11.MechanismParamInvalid, 0x82: p11.ObjectHandleInvalid, 0x90: p11.OperationActive,
    0x91: p11.OperationNotInitialized, 0xA0: p11.PinIncorrect, 0xB0: p11.SessionClosed,
    0xB3: p11.SessionHandleInvalid, 0xC0: p11.SignatureInvalid, 0xE0: p11.TokenNotPresent,
    0x101: p11.UserNotLoggedIn, 0x150: p11.PKCS11Error, 0x190: p11.PKCS11Error, 0x191: p11.PKCS11Error,
}


def check(rv: int, call: str) -> None:
    if rv != CKR_OK:
        raise _ERRORS.get(rv, p11.PKCS11Error)(f"{call} answered CKR 0x{rv:x}")


class Module:
    """One PKCS#11 module loaded in this process, initialised by hsmkms, with python-pkcs11 over it.

    ``lib`` is python-pkcs11's object for the module, made without its constructor (which would call
    ``C_Initialize(NULL)``): it loads the same shared object (the dynamic loader hands out one copy) and reads
    its own function list, and is used for everything but what this module does itself.
    """

    def __init__(self, path: str, reserved: str | None = None):
        self.path = path
        self.reserved = reserved
        try:
            dll = ctypes.CDLL(path)
        except OSError as exc:
            raise p11.PKCS11Error(f"cannot load {path}: {exc}") from None
        functions = ctypes.POINTER(_FunctionList)()
        get_function_list = dll.C_GetFunctionList
        get_function_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
        get_function_list.restype = CK_RV
        check(get_function_list(ctypes.byref(functions)), "C_GetFunctionList")
        self._dll = dll  # kept: the module stays loaded while this object lives
        table = functions.contents
        self._f = {
            name: ctypes.CFUNCTYPE(CK_RV, *arguments)(getattr(table, name))
            for name, arguments in _PROTOTYPES.items()
        }
        # the hot path's functions, looked up once
        self._encrypt_init, self._encrypt = self._f["EncryptInit"], self._f["Encrypt"]
        self._decrypt_init, self._decrypt = self._f["DecryptInit"], self._f["Decrypt"]
        self.lib = _pkcs11.lib.__new__(_pkcs11.lib, path)
        self.initialised_in: int | None = None  # the pid whose C_Initialize succeeded
        self._users: set[int] = set()  # ids of the backends of this process that use the module

    # --- initialisation ----------------------------------------------------------------------------------

    def initialize(self) -> None:
        """C_Initialize in this process.

        A module answering CKR_CRYPTOKI_ALREADY_INITIALIZED holds state from before (inherited across a fork,
        or from an earlier session): it is finalised and initialised again, without relying on what that
        C_Finalize answers.
        """
        if self.reserved is None:
            arguments = None
        else:
            # NSS softoken reads its configuration from the reserved field; the module may keep the pointer.
            self._init_args = _InitArgs(flags=CKF_OS_LOCKING_OK, pReserved=self.reserved.encode("utf-8"))
            arguments = ctypes.cast(ctypes.pointer(self._init_args), ctypes.c_void_p)
        rv = self._f["Initialize"](arguments)
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
            self._f["Finalize"](None)  # its answer does not matter: the next C_Initialize decides
            rv = self._f["Initialize"](arguments)
        check(rv, "C_Initialize")
        self.initialised_in = os.getpid()

    @property
    def initialised_here(self) -> bool:
        return self.initialised_in == os.getpid()

    def acquire(self, user: object) -> None:
        """Initialise the module in this process unless it is already, and count ``user`` as using it."""
        if not self.initialised_here:
            self.initialize()
            self._users = set()  # a forked child's copy named its parent's users
        self._users.add(id(user))

    def release(self, user: object) -> None:
        """``user`` is done with the module: finalise it when no other user in this process still has it open.
        (Finalising under another user would invalidate its handles, and a module reuses handle numbers, so a
        stale session or key handle could come to name another one.)"""
        self._users.discard(id(user))
        if not self._users:
            self.finalize()

    def finalize(self) -> None:
        """C_Finalize, when this process initialised the module; its answer is ignored (the device may be gone)."""
        if self.initialised_here:
            self.initialised_in = None
            self._f["Finalize"](None)

    # --- AES-GCM -----------------------------------------------------------------------------------------

    def gcm_encrypt(self, session: int, key: int, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """C_EncryptInit + C_Encrypt with CKM_AES_GCM and a 128-bit tag; returns ciphertext || tag."""
        self._init(self._encrypt_init, session, key, iv, aad, "C_EncryptInit")
        return self._run(self._encrypt, session, plaintext, len(plaintext) + GCM_TAG_BYTES, "C_Encrypt")

    def gcm_decrypt(self, session: int, key: int, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
        """C_DecryptInit + C_Decrypt with CKM_AES_GCM and a 128-bit tag; returns the plaintext."""
        self._init(self._decrypt_init, session, key, iv, aad, "C_DecryptInit")
        return self._run(self._decrypt, session, sealed, len(sealed), "C_Decrypt")

    def caller_iv_ignored(self, session: int, key: int) -> bool:
        """Whether the token replaces a caller's GCM IV with its own (AWS CloudHSM writes the IV it made into
        pIv): a random IV in a buffer of its own goes in, and comes back changed, or fails to decrypt.  A token
        that refuses a caller's IV raises (MechanismParamInvalid, as Thales Luna in FIPS mode)."""
        iv = os.urandom(TOKEN_IV_BYTES)
        iv_buffer = ctypes.create_string_buffer(iv, TOKEN_IV_BYTES)
        params = _GcmParams(ctypes.cast(iv_buffer, ctypes.c_char_p), TOKEN_IV_BYTES, TOKEN_IV_BYTES * 8, b"", 0,
                            GCM_TAG_BYTES * 8)
        mechanism = _Mechanism(CKM_AES_GCM, ctypes.addressof(params), _GCM_PARAMS_SIZE)
        check(self._encrypt_init(session, ctypes.byref(mechanism), key), "C_EncryptInit")
        sealed = self._run(self._encrypt, session, b"hsmkms", len(b"hsmkms") + GCM_TAG_BYTES, "C_Encrypt")
        if iv_buffer.raw != iv:
            return True
        try:
            return self.gcm_decrypt(session, key, iv, sealed, b"") != b"hsmkms"
        except (p11.EncryptedDataInvalid, p11.GeneralError, AeadDecryptFailed):
            return True

    def gcm_encrypt_token_iv(self, session: int, key: int, plaintext: bytes, aad: bytes,
                             style: str) -> tuple[bytes, bytes]:
        """C_EncryptInit + C_Encrypt with CKM_AES_GCM where the token makes the IV, handed back in ``style``
        (TOKEN_IV_STYLES).  Returns (the IV, ciphertext || tag); the IV is b"" when the token made none (it took
        the zeroed pIv as the caller's IV, or appended nothing): the caller must then refuse the output."""
        iv_buffer = ctypes.create_string_buffer(TOKEN_IV_BYTES)  # zeroed; the written style's token fills it
        if style == TOKEN_IV_WRITTEN:
            params = _GcmParams(ctypes.cast(iv_buffer, ctypes.c_char_p), TOKEN_IV_BYTES, TOKEN_IV_BYTES * 8, aad,
                                len(aad), GCM_TAG_BYTES * 8)
            room = 0
        else:
            params = _GcmParams(None, 0, TOKEN_IV_BYTES * 8, aad, len(aad), GCM_TAG_BYTES * 8)
            room = max(TOKEN_IV_LENGTHS)
        mechanism = _Mechanism(CKM_AES_GCM, ctypes.addressof(params), _GCM_PARAMS_SIZE)
        check(self._encrypt_init(session, ctypes.byref(mechanism), key), "C_EncryptInit")
        sealed_len = len(plaintext) + GCM_TAG_BYTES
        output = self._run(self._encrypt, session, plaintext, sealed_len + room, "C_Encrypt")  # params live on
        if style == TOKEN_IV_WRITTEN:
            iv = iv_buffer.raw if any(iv_buffer.raw) and len(output) == sealed_len else b""
        else:
            iv = output[sealed_len:] if len(output) - sealed_len in TOKEN_IV_LENGTHS else b""
        return iv, output[:sealed_len]

    @staticmethod
    def _init(function, session: int, key: int, iv: bytes, aad: bytes, name: str) -> None:
        # The module only reads pIv and pAAD here: the Python bytes are passed as they are, without a copy.
        params = _GcmParams(iv, len(iv), len(iv) * 8, aad, len(aad), GCM_TAG_BYTES * 8)
        mechanism = _Mechanism(CKM_AES_GCM, ctypes.addressof(params), _GCM_PARAMS_SIZE)
        rv = function(session, ctypes.byref(mechanism), key)
        if rv:
            check(rv, name)

    @staticmethod
    def _run(function, session: int, data: bytes, size: int, name: str) -> bytes:
        """One single-part call with an output buffer of ``size`` bytes.  A module that still wants more answers
        CKR_BUFFER_TOO_SMALL with the length it needs and keeps the operation active: the call is made once
        more with that length, which also ends the operation."""
        output = ctypes.create_string_buffer(size)
        length = CK_ULONG(size)
        rv = function(session, data, len(data), output, ctypes.byref(length))
        if rv == CKR_BUFFER_TOO_SMALL:
            output = ctypes.create_string_buffer(length.value)
            rv = function(session, data, len(data), output, ctypes.byref(length))
        if rv:
            check(rv, name)
        return ctypes.string_at(output, length.value)

    # --- what a token offers -----------------------------------------------------------------------------

    def mechanism_info(self, slot_id: int, mechanism: int) -> MechanismInfo:
        """C_GetMechanismInfo (MechanismInvalid when the token does not offer the mechanism)."""
        info = _MechanismInfo()  # zeroed: a module that leaves a field unset leaves it 0
        check(self._f["GetMechanismInfo"](slot_id, mechanism, ctypes.byref(info)), "C_GetMechanismInfo")
        return MechanismInfo(info.ulMinKeySize, info.ulMaxKeySize, info.flags)

    # --- token initialisation ----------------------------------------------------------------------------

    def init_token(self, slot_id: int, so_pin: str, label: str) -> None:
        so = so_pin.encode("utf-8")
        padded = label.encode("utf-8")
        if len(padded) > 32:
            raise ValueError("a token label has at most 32 bytes")
        check(self._f["InitToken"](slot_id, so, len(so), padded.ljust(32, b" ")), "C_InitToken")


_modules: dict[str, Module] = {}
_modules_lock = threading.Lock()


def module(path: str, reserved: str | None = None) -> Module:
    """The process's Module for ``path``: loaded once, initialised by the caller when needed."""
    with _modules_lock:
        loaded = _modules.get(path)
        if loaded is None:
            loaded = _modules[path] = Module(path, reserved)
        elif loaded.reserved != reserved:
            raise p11.ArgumentsBad(f"{path} is already loaded in this process with other initialisation arguments")
        return loaded
