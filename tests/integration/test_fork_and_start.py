"""A forked child initialises the module without relying on C_Finalize of what it inherited, and a token
briefly missing from the slot list at start is looked for again, within a bounded wait."""

from __future__ import annotations

import copy
import ctypes
import multiprocessing
import os
import time
import uuid

import pytest
from pkcs11 import exceptions as p11

import hsmkms.hsm.pkcs11.backend as backend_module
from hsmkms.hsm.backend import HsmUnavailable
from hsmkms.hsm.pkcs11 import native
from tests import hsm_double, tokens

CKR_GENERAL_ERROR = 0x5
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190


class ForkedModule:
    """The real module with C_Initialize and C_Finalize answering, in a forked child, as some modules do:
    ``"not-initialised"`` (openCryptoki 3.8): the child's C_Initialize starts afresh by itself, and C_Finalize
    of the inherited state answers CKR_CRYPTOKI_NOT_INITIALIZED; ``"keeps-state"`` (SoftHSM 2.6): the child's
    first C_Initialize answers CKR_CRYPTOKI_ALREADY_INITIALIZED, and here C_Finalize, though it finalises,
    answers CKR_GENERAL_ERROR.  Every other call is the real module's."""

    def __init__(self, real: native.Module, behaviour: str):
        self.module = copy.copy(real)  # hsmkms's own Module code, over these C functions
        self.module._users = set()
        self.module._f = dict(real._f)
        self.parent, self.behaviour = os.getpid(), behaviour
        self.child_calls: list[str] = []
        self._real_initialize, self._real_finalize = real._f["Initialize"], real._f["Finalize"]
        function = ctypes.CFUNCTYPE(native.CK_RV, ctypes.c_void_p)
        self.module._f["Initialize"] = function(self._initialize)
        self.module._f["Finalize"] = function(self._finalize)

    def _initialize(self, arguments):
        if os.getpid() == self.parent:
            return self._real_initialize(arguments)
        self.child_calls.append("C_Initialize")
        first = self.child_calls.count("C_Initialize") == 1
        if first and self.behaviour == "keeps-state":
            return native.CKR_CRYPTOKI_ALREADY_INITIALIZED
        if first:
            self._real_finalize(None)  # the module's own fresh start (the real one keeps its state)
        return self._real_initialize(arguments)

    def _finalize(self, reserved):
        if os.getpid() == self.parent:
            return self._real_finalize(reserved)
        self.child_calls.append("C_Finalize")
        if self.behaviour == "not-initialised":
            return CKR_CRYPTOKI_NOT_INITIALIZED
        self._real_finalize(reserved)
        return CKR_GENERAL_ERROR


def child_decrypts(backend, forked, object_id, iv, sealed, queue) -> None:
    try:
        queue.put((backend.gcm_decrypt(object_id, iv, sealed, b""), forked.child_calls))
    except BaseException as exc:  # reported to the test, which fails on it
        queue.put((repr(exc), forked.child_calls))


@pytest.mark.parametrize("behaviour, child_calls", [("not-initialised", ["C_Initialize"]),
                                                    ("keeps-state", ["C_Initialize", "C_Finalize", "C_Initialize"])])
def test_a_forked_child_initialises_whatever_c_finalize_answers(behaviour, child_calls, hsm_settings, hsm,
                                                                monkeypatch):
    real = backend_module._library(hsm_settings.module, hsm_settings.init_reserved or None)
    forked = ForkedModule(real, behaviour)
    monkeypatch.setattr(backend_module, "_library", lambda path, reserved=None: forked.module)
    backend = tokens.backend(hsm_settings)
    backend.open()  # in the parent, before the fork: as hsmkms serve's master
    object_id = str(uuid.uuid4())
    backend.create_aes_key(object_id, f"hsmkms:cmk:test:{object_id}")
    iv = os.urandom(12)
    sealed = backend.gcm_encrypt(object_id, iv, b"from the parent", b"")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=child_decrypts, args=(backend, forked, object_id, iv, sealed, queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (b"from the parent", child_calls)


class TokenMissingAtFirst(hsm_double.ModuleDouble):
    """C_GetSlotList shows no token with the label for the first ``misses`` looks."""

    def __init__(self, real, misses: int):
        super().__init__(real)
        self.misses, self.looks = misses, 0
        self.lib = self  # get_token below; the rest of python-pkcs11's lib through __getattr__

    def get_token(self, **query):
        self.looks += 1
        if self.looks <= self.misses:
            raise p11.NoSuchToken("no token")
        return self.real.lib.get_token(**query)

    def __getattr__(self, name):
        return getattr(self.real.lib if name in ("get_slots", "get_tokens") else self.real, name)


def test_a_token_briefly_missing_at_start_is_looked_for_again(hsm_settings, hsm, monkeypatch):
    double = hsm_double.install(monkeypatch, hsm_settings, lambda real: TokenMissingAtFirst(real, misses=3))
    backend = tokens.backend(hsm_settings)
    backend.open()
    try:
        assert double.looks == 4
        assert len(backend.random(16)) == 16
    finally:
        backend.close()


def test_a_token_still_missing_fails_after_a_bounded_wait(hsm_settings, hsm, monkeypatch):
    hsm_double.install(monkeypatch, hsm_settings, lambda real: TokenMissingAtFirst(real, misses=10**6))
    monkeypatch.setattr(backend_module, "TOKEN_START_WAIT_S", 0.5)
    backend = tokens.backend(hsm_settings)
    started = time.monotonic()
    with pytest.raises(HsmUnavailable, match="no token labelled"):
        backend.open()
    assert 0.3 < time.monotonic() - started < 3
