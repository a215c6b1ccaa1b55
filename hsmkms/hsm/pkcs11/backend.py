"""The HsmBackend over a PKCS#11 module: python-pkcs11 for sessions and objects, ``native`` for initialisation
and AES-GCM.  This package is the only code that touches PKCS#11.

Facts this code is built on (measured on SoftHSM 2.6.1 and NSS softoken 3.87, see the design notes):
- The library is initialised with NULL arguments (or NSS's reserved string), and python-pkcs11 releases the
  GIL around each call; SoftHSM then runs without its own mutexes: two threads calling at once crash it.
  Every call into the module therefore holds ``self._lock``; processes, not threads, give parallelism.
- A forked child must initialise the library itself, so the backend opens lazily and again after a fork.
- A second login in one process fails (UserAlreadyLoggedIn): log in once, keep one session.
- Object searches grow linearly with the token's size: handles are cached, warmed by one enumeration
  at open, and never searched for on the hot path.
- Several processes on one SoftHSM token directory need a file lock around object creation and around a
  login, which rewrites the token's own file (see the class), and a re-initialisation to see objects another
  process made (see ``_call``).  The soak and a CI run found these.  They are the ``softhsm`` profile's.
- A GCM tag mismatch (wrong AAD, tampered data) surfaces as CKR_GENERAL_ERROR on SoftHSM (the ``softhsm``
  profile), as CKR_ENCRYPTED_DATA_INVALID on others.
- A token that refuses a mechanism, a template or a parameter is configured wrongly, not failing: such errors
  are raised as HsmConfigurationError and the session is kept.
- python-pkcs11 has no encoding for CKA_ALLOWED_MECHANISMS (an array of CK_MECHANISM_TYPE): sessions are
  opened with an attribute mapper that packs and unpacks it.  A template it cannot pack makes python-pkcs11
  free uninitialised pointers (a crash), so the handler must be registered before any template uses it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass, PrivateKey, TokenFlag
from pkcs11 import exceptions as p11
from pkcs11.attributes import AttributeMapper

from hsmkms.hsm.backend import (
    IMPORT_WRAPPING_ALGORITHMS,
    DecryptionFailed,
    HsmAuthFailed,
    HsmConfigurationError,
    HsmError,
    HsmKeyMissing,
    HsmUnavailable,
    HsmUnsupported,
    KeyObjectInfo,
    UnwrapFailed,
)
from hsmkms.hsm.namespace import Namespace
from hsmkms.hsm.oaep import OaepDecodingError, oaep_decode
from hsmkms.hsm.pkcs11 import keypairs, native
from hsmkms.hsm.profiles import TokenProfile, profile_for

log = logging.getLogger(__name__)

T = TypeVar("T")

RANDOM_POOL_BYTES = 8192
# After the token became unavailable, wait this long before the next reconnect attempt so that a dead
# HSM costs each request one fast failure, not one slow reconnect.
RECONNECT_INTERVAL_S = 1.0
# /readyz runs a real GCM round trip; a success is reused for this long (and forgotten at a fault), a failure
# is not reused, so that a token that is back is seen at once.
READINESS_CACHE_S = 5.0
# At a process's first start, how long a token missing from the slot list is looked for again.
TOKEN_START_WAIT_S = 5.0
CANARY_AAD = b"hsmkms:readiness-canary"

CKF_ENCRYPT, CKF_DECRYPT, CKF_GENERATE = 0x100, 0x200, 0x8000
_FLAG_NAMES = {CKF_ENCRYPT: "CKF_ENCRYPT", CKF_DECRYPT: "CKF_DECRYPT", CKF_GENERATE: "CKF_GENERATE"}
MASTER_KEY_BYTES = 32


@dataclass(frozen=True)
class Requirement:
    """A mechanism hsmkms cannot work without, what it must be able to do, and why."""

    mechanism: Mechanism
    flags: int
    purpose: str


REQUIREMENTS = (
    Requirement(Mechanism.AES_KEY_GEN, CKF_GENERATE, "to generate the AES-256 master keys in the token"),
    Requirement(Mechanism.AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, "to seal and open every data key and ciphertext"),
)


def unmet_requirements(module: native.Module, slot_id: int) -> list[str]:
    """What the token lacks of REQUIREMENTS (C_GetMechanismInfo), one sentence each; [] when nothing."""
    return [unmet for requirement in REQUIREMENTS if (unmet := unmet_requirements_of(module, slot_id, requirement))]


def unmet_requirements_of(module: native.Module, slot_id: int, requirement: Requirement) -> str:
    """What the token lacks of one requirement, as a sentence; "" when nothing."""
    name = f"CKM_{requirement.mechanism.name}"
    try:
        info = module.mechanism_info(slot_id, requirement.mechanism)
    except p11.PKCS11Error as exc:
        return f"{name} is not offered ({type(exc).__name__}); hsmkms needs it {requirement.purpose}"
    missing = [flag_name for flag, flag_name in _FLAG_NAMES.items() if requirement.flags & flag and
               not info.flags & flag]
    if missing:
        return f"{name} lacks {', '.join(missing)}; hsmkms needs it {requirement.purpose}"
    # Sizes are in bytes for AES (PKCS#11 2.40); some modules give bits.  0/0 means "not said".
    sizes = (MASTER_KEY_BYTES, MASTER_KEY_BYTES * 8)
    if info.max_key_size and not any(info.min_key_size <= size <= info.max_key_size for size in sizes):
        return (f"{name} does not take 256-bit keys (it takes {info.min_key_size}-{info.max_key_size}); hsmkms "
                f"needs it {requirement.purpose}")
    return ""


_AUTH_ERRORS = (p11.PinIncorrect, p11.PinInvalid, p11.PinLocked, p11.PinExpired, p11.PinLenRange)
_STALE_HANDLE_ERRORS = (p11.KeyHandleInvalid, p11.ObjectHandleInvalid)
_TAG_MISMATCH_ERRORS = (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, native.AeadDecryptFailed)
# The token refuses what it was asked (a mechanism, its parameters, a template, a key for that use): the
# configuration or the token's policy is wrong.  Retrying or reconnecting cannot help, and nothing is broken.
CONFIGURATION_ERRORS = (
    p11.MechanismInvalid, p11.MechanismParamInvalid, p11.TemplateInconsistent, p11.TemplateIncomplete,
    p11.AttributeTypeInvalid, p11.AttributeValueInvalid, p11.AttributeReadOnly, p11.KeyTypeInconsistent,
    p11.KeySizeRange, native.KeyFunctionNotPermitted, p11.FunctionNotSupported, p11.DomainParamsInvalid,
    p11.ArgumentsBad, p11.DataLenRange, p11.DataInvalid,
)
# What a token answers when it does not know CKA_ALLOWED_MECHANISMS (PKCS#11 2.40: CKR_ATTRIBUTE_TYPE_INVALID).
_ATTRIBUTE_REFUSED_ERRORS = (p11.AttributeTypeInvalid,)
# The only mechanism a master key may be used with.
MASTER_KEY_MECHANISMS = (Mechanism.AES_GCM,)


def _library(module_path: str, reserved: str | None = None) -> native.Module:
    """The process's module for ``module_path`` (tests replace it with a double)."""
    return native.module(module_path, reserved)


def attribute_mapper() -> AttributeMapper:
    """python-pkcs11's mapper, taught CKA_ALLOWED_MECHANISMS: an array of CK_MECHANISM_TYPE (a native CK_ULONG)."""
    mapper = AttributeMapper()
    mapper.register_handler(
        Attribute.ALLOWED_MECHANISMS,
        lambda mechanisms: b"".join(struct.pack("L", int(m)) for m in mechanisms),
        lambda raw: [Mechanism(m) for (m,) in struct.iter_unpack("L", raw)],
    )
    return mapper


def master_key_template(cka_id: bytes, label: str, restrict_mechanisms: bool = True) -> dict:
    """What a master key is: a token object that can only encrypt and decrypt with AES-GCM, and never leaves.

    ``restrict_mechanisms``: also say CKA_ALLOWED_MECHANISMS = {CKM_AES_GCM}, so that even a holder of the PIN
    cannot use the key with another mechanism (ECB would reveal GCM's hash subkey); for tokens that support it.
    """
    template = {
        **keypairs.kept_in_token(cka_id, label),
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
    }
    if restrict_mechanisms:
        template[Attribute.ALLOWED_MECHANISMS] = list(MASTER_KEY_MECHANISMS)
    return template


WRAPPING_KEY_BITS = 2048
# Import wrapping algorithm -> (C_UnwrapKey mechanism, its parameter, the host-side padding that makes such
# ciphertext; the padding is used only to measure what the token can unwrap, with throwaway bytes).
UNWRAP_MECHANISMS = {
    "RSAES_OAEP_SHA_256": (Mechanism.RSA_PKCS_OAEP, (Mechanism.SHA256, MGF.SHA256, None),
                           lambda: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)),
    "RSAES_OAEP_SHA_1": (Mechanism.RSA_PKCS_OAEP, (Mechanism.SHA_1, MGF.SHA1, None),
                         lambda: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)),
    "RSAES_PKCS1_V1_5": (Mechanism.RSA_PKCS, None, padding.PKCS1v15),
}
assert tuple(UNWRAP_MECHANISMS) == IMPORT_WRAPPING_ALGORITHMS
# What a token answers when wrapped material does not open (bad padding, wrong key, wrong length).  NSS answers
# CKR_ARGUMENTS_BAD for some (measured); only algorithms the token was measured to unwrap with are used, so
# there it means the data, not the mechanism.
_UNWRAP_REFUSED_ERRORS = (p11.WrappedKeyInvalid, p11.WrappedKeyLenRange, p11.EncryptedDataInvalid,
                          p11.EncryptedDataLenRange, p11.DataInvalid, p11.DataLenRange, p11.ArgumentsBad)


def wrapping_private_template(cka_id: bytes, label: str, restrict_mechanisms: bool) -> dict:
    """The private half of an import wrapping key: stays in the token, only unwraps (no decrypt: the material
    it opens never reaches the host)."""
    template = {
        **keypairs.kept_in_token(cka_id, label),
        Attribute.UNWRAP: True,
        Attribute.DECRYPT: False,
        Attribute.SIGN: False,
        Attribute.DERIVE: False,
    }
    if restrict_mechanisms:
        template[Attribute.ALLOWED_MECHANISMS] = [Mechanism.RSA_PKCS_OAEP, Mechanism.RSA_PKCS]
    return template


class Pkcs11Backend:
    """One logged-in session per process; calls serialised by a thread lock.  With the ``softhsm`` profile,
    calls are coordinated across processes sharing the token by a file lock (``lock_path``): shared to list or
    search objects, exclusive while an object is created or destroyed and while logging in.  SoftHSM's file
    store is not safe otherwise: a process that lists the token while another writes an object file can read
    it half-written."""

    def __init__(self, module_path: str, token_label: str, pin_source: Callable[[], str],
                 wait_seconds: float = 10.0, lock_path: Path | None = None, profile: TokenProfile | None = None,
                 init_reserved: str | None = None, deployment: str = "", gcm_iv: str = "host"):
        self.profile = profile or profile_for(module_path)
        self.token_makes_iv = gcm_iv == "token"  # [hsm] gcm_iv: who makes GCM IVs (the readiness canary's too)
        self._token_iv_style: str | None = None  # how the token hands its IV back, once known
        self.namespace = Namespace(deployment)  # which of the token's objects are this deployment's
        self._module_path = module_path
        self._init_reserved = init_reserved  # C_Initialize's pReserved (NSS softoken: its database)
        self._token_label = token_label
        self._pin_source = pin_source  # called only when logging in; the PIN is never stored here
        # A PKCS#11 call cannot be interrupted; when one hangs (an HSM gone from the network), the others
        # give up waiting after this long instead of hanging with it.
        self._wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._lock_path = lock_path if self.profile.file_lock else None
        general = (p11.GeneralError,) if self.profile.general_error_is_tag_mismatch else ()
        self._tag_mismatch_errors = _TAG_MISMATCH_ERRORS + general
        self._lock_file = None  # opened per process: a file lock is shared with a forked child otherwise
        self._lock_file_pid: int | None = None
        self._token_locked = False
        self._pool_lock = threading.Lock()
        self._pool, self._pool_used, self._pool_pid = b"", 0, None
        self._pid: int | None = None
        self._lib: native.Module | None = None
        self._session = None
        self._keys: dict[str, object] = {}  # object id -> python-pkcs11 key (this deployment's, as listed)
        # object id -> the plain handle of its key in _keys, taken at the key's first GCM call (_gcm_direct).
        # python-pkcs11 makes a class for each object it returns, so reading .handle walks that key's own class
        # and wrapper: on a token of 10,000 keys, 5-6 of a Decrypt's last-level cache misses (callgrind).
        self._handles: dict[str, int] = {}
        self._labels: dict[str, str] = {}  # object id -> label as the service knows it
        self._foreign: list[str] = []  # labels of hsmkms objects of other deployments, as listed
        self._last_failure = 0.0
        self._readiness: tuple[int, float] | None = None  # (pid, when) of the last canary that succeeded
        self._checked_in: int | None = None  # the pid that checked the token's mechanisms
        self._started_in: int | None = None  # the pid that has had a session (its start is over)
        self._slot_id: int | None = None
        # Cleared when the token refuses CKA_ALLOWED_MECHANISMS in a template (it does not support it).
        self._restrict_mechanisms = self.profile.allowed_mechanisms
        self._wrapping_keys: dict[str, object] = {}  # object id -> import wrapping private key (handle cache)
        self._unwrap_algorithms: tuple[str, ...] | None = None  # measured at the first need
        self._unwrap_sets_modifiable = True  # cleared when the token refuses CKA_MODIFIABLE in C_UnwrapKey

    # --- locking -----------------------------------------------------------------------------------------

    def _acquire(self) -> None:
        """Take the thread lock, or give up with HsmUnavailable after the configured wait."""
        if not self._lock.acquire(timeout=self._wait_seconds):
            raise HsmUnavailable(f"the HSM has not answered a call for {self._wait_seconds:g} s")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def _token_lock(self, exclusive: bool) -> Iterator[None]:
        """The file lock across processes: exclusive to write objects, shared to list or search them.

        Crypto calls on known handles need neither (they read no object file another process may be
        writing), which keeps the lock off the hot path.  Taken with the thread lock held; not nested (a
        second flock on the same file would change the mode of the first).
        """
        if self._lock_path is None or self._token_locked:
            yield
            return
        if self._lock_file_pid != os.getpid():
            self._lock_file = open(self._lock_path, "a+b")  # noqa: SIM115 -- held for the process's life
            self._lock_file_pid = os.getpid()
        lock_file, deadline = self._lock_file, time.monotonic() + self._wait_seconds
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        while True:
            try:
                fcntl.flock(lock_file, mode)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HsmUnavailable("another process has held the HSM for too long") from None
                time.sleep(0.0005)
        self._token_locked = True
        try:
            yield
        finally:
            self._token_locked = False
            fcntl.flock(lock_file, fcntl.LOCK_UN)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def open(self) -> None:
        with self._locked():
            self._ensure_session()

    def close(self) -> None:
        with self._locked():
            self._drop_session(finalize=True)

    def ping(self, canary_id: str) -> bool:
        """The token serves hsmkms: a real AES-GCM encrypt and decrypt with the key object ``canary_id`` (random
        bytes and IV from the token's RNG).  A success is reused for READINESS_CACHE_S, and forgotten at a fault."""
        now = time.monotonic()
        cached = self._readiness
        if cached is not None and cached[0] == os.getpid() and now - cached[1] < READINESS_CACHE_S:
            return True
        try:
            drawn = self.random(len(CANARY_AAD) + 12)
            message, iv = drawn[:-12], drawn[-12:]
            if self.token_makes_iv:
                iv, sealed = self.gcm_encrypt_token_iv(canary_id, message, CANARY_AAD)
            else:
                sealed = self.gcm_encrypt(canary_id, iv, message, CANARY_AAD)
            ready = self.gcm_decrypt(canary_id, iv, sealed, CANARY_AAD) == message
        except (HsmError, DecryptionFailed) as exc:
            log.warning("the readiness canary failed: %s: %s", type(exc).__name__, exc)
            ready = False
        self._readiness = (os.getpid(), now) if ready else None
        return ready

    def _ensure_session(self):
        """Return the open session, opening (or re-opening after a fork or a fault) when needed.  Locked."""
        pid = os.getpid()
        if self._session is not None and self._pid == pid:
            return self._session
        if self._pid != pid:
            # A forked child inherits the parent's Python objects but not a usable library state.
            self._lib, self._session, self._keys, self._handles, self._pid = None, None, {}, {}, pid
            self._wrapping_keys = {}
        now = time.monotonic()
        if self._last_failure and now - self._last_failure < RECONNECT_INTERVAL_S:
            raise HsmUnavailable("the HSM was unavailable moments ago; retrying shortly")
        try:
            # SoftHSM rewrites its token file at a login (the PIN counters): another process must not read
            # it half-written, so a login takes the lock exclusively, like an object being written.
            with self._token_lock(exclusive=True):
                self._session = self._login()
            self._started_in = pid
            if self._checked_in != pid:
                self._check_mechanisms()
                if not self.token_makes_iv:
                    self._check_caller_iv(self._session)
                self._checked_in = pid
            with self._token_lock(exclusive=False):
                self._enumerate_keys(self._session)
        except BaseException:
            self._drop_session(finalize=True)  # a later attempt starts from a fresh C_Initialize
            self._last_failure = now
            raise
        self._last_failure = 0.0
        return self._session

    def _check_mechanisms(self) -> None:
        """Refuse a token that lacks a mechanism hsmkms needs, with what it lacks and what to do."""
        unmet = unmet_requirements(self._lib, self._slot_id)
        if unmet:
            raise HsmConfigurationError(
                f"the token {self._token_label!r} ({self._module_path}) cannot serve hsmkms: {'; '.join(unmet)}.  "
                "Use a token or HSM partition that offers it (see the README, In front of your HSM); on a vendor "
                "HSM, ask its administrator whether a policy turns it off.  `hsmkms hsm check` shows the details")

    def _find_token(self):
        """The token, from a module initialised in this process.

        At a process's first start only, a token missing from the slot list is looked for again, from a fresh
        C_Initialize, for up to TOKEN_START_WAIT_S: openCryptoki showed an empty slot list to some of 4-8
        processes initialising and logging in at once.  Later (a reconnect), a missing token fails at once.
        """
        deadline = time.monotonic() + (TOKEN_START_WAIT_S if self._started_in != os.getpid() else 0.0)
        pause = 0.05
        while True:
            self._lib = _library(self._module_path, self._init_reserved)
            self._lib.acquire(self)  # initialised in this process (a forked child initialises it itself)
            try:
                return self._lib.lib.get_token(token_label=self._token_label)
            except p11.NoSuchToken:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("no token labelled %r in %s yet; looking again", self._token_label, self._module_path)
                self._lib.release(self)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _check_caller_iv(self, session) -> None:
        """With [hsm] gcm_iv = "host", refuse a token that makes GCM IVs itself: it would seal under an IV other
        than the one the blob records (AWS CloudHSM ignores the caller's), or refuses ours (Thales Luna in FIPS
        mode).  Checked once per process with a session key, so that no such blob is ever made."""
        advice = (f'the token {self._token_label!r} makes its own GCM IVs ({{}}): set [hsm] gcm_iv = "token" for '
                  "it (see the README, The ciphertext blob)")
        key = session.generate_key(KeyType.AES, 256, store=False, template={
            Attribute.TOKEN: False, Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False})
        try:
            if self._lib.caller_iv_ignored(session.handle, key.handle):
                raise HsmConfigurationError(advice.format("it did not use the IV it was given"))
        except (p11.MechanismParamInvalid, p11.ArgumentsBad) as exc:
            raise HsmConfigurationError(advice.format(f"it refused the IV it was given: {exc}")) from exc
        finally:
            key.destroy()

    def _login(self):
        try:
            token = self._find_token()
            self._slot_id = token.slot.slot_id
        except p11.NoSuchToken as exc:
            raise HsmUnavailable(f"no token labelled {self._token_label!r} in {self._module_path}") from exc
        except p11.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot load PKCS#11 module {self._module_path}: {exc!r}") from exc
        try:
            return token.open(rw=True, user_pin=self._pin_source(), attribute_mapper=attribute_mapper())
        except p11.UserAlreadyLoggedIn:
            return token.open(rw=True, attribute_mapper=attribute_mapper())
        except _AUTH_ERRORS as exc:
            raise HsmAuthFailed(f"the token {self._token_label!r} refused the PIN ({type(exc).__name__})") from exc
        except p11.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot open a session on {self._token_label!r}: {exc!r}") from exc

    def _drop_session(self, finalize: bool) -> None:
        session, self._session, self._keys, self._handles = self._session, None, {}, {}
        self._wrapping_keys = {}  # handles belong to the session's library instance
        if self._pid != os.getpid():
            return  # the parent's objects: nothing of them is ours to close
        if session is not None:
            try:
                session.close()
            except Exception:  # the session may already be gone with the device
                pass
        if finalize and self._lib is not None:
            self._lib.release(self)

    def _call(self, operation: Callable[[object], T], missing_key_is_fault: bool = False,
              exclusive: bool = False) -> T:
        """Run ``operation(session)`` under the locks.

        - With the ``softhsm`` profile, an object id that cannot be found is looked for once more after a fresh
          C_Initialize: SoftHSM 2.6.1 does not always notice objects another process created (a process that
          writes the token itself can miss the other's changes), and a re-initialisation reads the token anew.
        - A refusal (CONFIGURATION_ERRORS: a mechanism, template or parameter the token will not take) is a
          configuration error: logged, raised as HsmConfigurationError, and the session is kept.
        - Any other PKCS#11 failure but a failed tag check is trouble with the HSM: the session is dropped
          and the library finalised.  When the failing session was an old one, the call reconnects at once
          and tries again; otherwise later calls reconnect after RECONNECT_INTERVAL_S.  That is how a token
          that went away and came back is picked up again without a restart.
        - For crypto calls (``missing_key_is_fault``), a key still missing after that is HSM trouble when the
          token shows no objects at all (SoftHSM's token directory went away); one missing object only fails
          its own calls.
        """
        self._acquire()  # not through _locked: a generator context manager costs every HSM call a few µs
        try:
            if exclusive:
                with self._token_lock(exclusive=True):
                    return self._attempt(operation, missing_key_is_fault)
            return self._attempt(operation, missing_key_is_fault)
        finally:
            self._lock.release()

    def _attempt(self, operation: Callable[[object], T], missing_key_is_fault: bool) -> T:
        """``_call``'s body, with the locks held."""
        for attempt in (1, 2):
            was_open = self._session is not None
            session = None
            try:
                session = self._ensure_session()
                return operation(session)
            except DecryptionFailed:
                raise
            except HsmKeyMissing as exc:
                if attempt == 1 and self.profile.reinitialise_to_find:
                    self._drop_session(finalize=True)
                    continue
                if not missing_key_is_fault or session is None or self._keys:
                    raise
                failure: Exception = exc
            except CONFIGURATION_ERRORS as exc:
                log.error("the token %r refused a request (%s: %s): a configuration error, not a fault; the "
                          "session is kept.  Run `hsmkms hsm check` to see what the token supports",
                          self._token_label, type(exc).__name__, exc)
                raise HsmConfigurationError(
                    f"the token {self._token_label!r} refused the request: {type(exc).__name__}") from exc
            except p11.PKCS11Error as exc:
                failure = exc
            self._fault(type(failure).__name__)
            if not was_open or attempt == 2:
                raise HsmUnavailable(f"HSM call failed: {type(failure).__name__}") from failure
            self._last_failure = 0.0  # the session was stale: reconnect now, once
        raise AssertionError("unreachable")

    def _fault(self, what: str) -> None:
        log.error("HSM fault (%s): closing the session; reconnecting", what)
        self._drop_session(finalize=True)
        self._last_failure = time.monotonic()
        self._readiness = None

    # --- key objects -------------------------------------------------------------------------------------

    def _enumerate_keys(self, session) -> None:
        """List the token's secret and private keys (a key pair is known by its private key): this deployment's
        into the handle cache, other deployments' aside."""
        keys, labels, foreign = {}, {}, []
        objects = [*session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}),
                   *session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})]
        for obj in objects:
            try:
                label, cka_id = obj[Attribute.LABEL], bytes(obj[Attribute.ID])
            except _STALE_HANDLE_ERRORS:
                continue  # gone while we listed
            owned = self.namespace.owned(label, cka_id)
            if owned is not None:
                keys[owned[0]], labels[owned[0]] = obj, owned[1]
            elif self.namespace.is_hsmkms(label):
                foreign.append(label)
        self._keys, self._handles, self._labels, self._foreign = keys, {}, labels, sorted(foreign)

    def _key(self, session, object_id: str):
        key = self._keys.get(object_id)
        if key is None:
            # Made by another process since we opened: one search, then cached.  The search is read to its end
            # (C_FindObjectsFinal at once): python-pkcs11's get_key leaves it open when nothing is found, and a
            # strict token then answers the session's next search with OperationActive.
            with self._token_lock(exclusive=False):
                found = self._objects_with_id(session, object_id, (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY))
            if not found:
                raise HsmKeyMissing(object_id)
            key = found[0]
            self._remember_key(object_id, key)
        return key

    def _remember_key(self, object_id: str, key, label: str | None = None) -> None:
        """Cache a key object (and the label it was made with) under its id, in place of any before it."""
        self._keys[object_id] = key
        self._handles.pop(object_id, None)
        if label is not None:
            self._labels[object_id] = label

    def _forget_key(self, object_id: str) -> None:
        self._keys.pop(object_id, None)
        self._handles.pop(object_id, None)

    def _objects_with_id(self, session, object_id: str, classes) -> list:
        """The objects of these classes with this id (each search read to its end)."""
        cka_id = self.namespace.cka_id(object_id)
        return [obj for object_class in classes
                for obj in session.get_objects({Attribute.CLASS: object_class, Attribute.ID: cka_id})]

    def _with_key(self, object_id: str, operation: Callable[[object], T], missing_key_is_fault: bool = True,
                  exclusive: bool = False) -> T:
        """Run ``operation(key)`` on the object with this id (the handle from the cache)."""

        def run(session):
            try:
                return operation(self._key(session, object_id))
            except _STALE_HANDLE_ERRORS:
                # Destroyed (or re-created) by another process: forget the handle and look once more.
                self._forget_key(object_id)
                return operation(self._key(session, object_id))

        return self._call(run, missing_key_is_fault=missing_key_is_fault, exclusive=exclusive)

    def create_aes_key(self, object_id: str, label: str) -> None:
        cka_id, cka_label = self.namespace.cka_id(object_id), self.namespace.cka_label(label)

        def generate(session):
            def make(restrict: bool):
                template = master_key_template(cka_id, cka_label, restrict_mechanisms=restrict)
                return session.generate_key(KeyType.AES, 256, store=True, template=template)

            try:
                key = make(self._restrict_mechanisms)
            except _ATTRIBUTE_REFUSED_ERRORS as exc:
                if not self._restrict_mechanisms:
                    raise
                log.warning("the token does not take CKA_ALLOWED_MECHANISMS (%s): master keys are made without "
                            "it, so a holder of the PIN can use them with other mechanisms", type(exc).__name__)
                self._restrict_mechanisms = False
                key = make(False)
            self._remember_key(object_id, key, label)

        self._call(generate, exclusive=True)

    def destroy_key(self, object_id: str) -> None:
        def destroy(key) -> None:
            if isinstance(key, PrivateKey):  # a key pair: its public key goes with it
                for public in self._objects_with_id(self._session, object_id, (ObjectClass.PUBLIC_KEY,)):
                    public.destroy()
            key.destroy()
            self._forget_key(object_id)
            self._labels.pop(object_id, None)

        try:
            self._with_key(object_id, destroy, missing_key_is_fault=False, exclusive=True)
        except HsmKeyMissing:
            # Already gone, or the id is an import wrapping key's (recovery finishes journalled objects by id).
            self.destroy_wrapping_key(object_id)

    def has_key(self, object_id: str) -> bool:
        try:
            self._with_key(object_id, lambda key: None, missing_key_is_fault=False)
            return True
        except HsmKeyMissing:
            return False

    def list_key_ids(self) -> dict[str, str]:
        def enumerate_all(session):
            with self._token_lock(exclusive=False):
                self._enumerate_keys(session)
            return dict(self._labels)

        return self._call(enumerate_all)

    def foreign_objects(self) -> list[str]:
        """Labels of hsmkms objects of other deployments on the token (as of the last listing: call
        list_key_ids first for a fresh one)."""
        return list(self._foreign)

    def key_info(self, object_id: str) -> KeyObjectInfo:
        return self._with_key(object_id, lambda key: self._info(object_id, key))

    def _info(self, object_id: str, key) -> KeyObjectInfo:
        def read(attribute):
            try:
                return key[attribute]
            except (p11.AttributeTypeInvalid, p11.AttributeSensitive):  # not of this class (a private key cannot wrap)
                return False

        a = Attribute
        if key.object_class == ObjectClass.SECRET_KEY:
            key_bits = key[a.VALUE_LEN] * 8
        elif isinstance(key, PrivateKey) and key.key_type != KeyType.RSA:
            key_bits = 256  # both curves hsmkms makes (P-256, secp256k1) are 256-bit
        else:
            key_bits = len(key[a.MODULUS]) * 8
        return KeyObjectInfo(
            object_id=object_id,
            label=key[a.LABEL],  # as on the token
            token=key[a.TOKEN],
            private=key[a.PRIVATE],
            sensitive=key[a.SENSITIVE],
            extractable=key[a.EXTRACTABLE],
            modifiable=key[a.MODIFIABLE],
            always_sensitive=key[a.ALWAYS_SENSITIVE],
            never_extractable=key[a.NEVER_EXTRACTABLE],
            encrypt=read(a.ENCRYPT),
            decrypt=read(a.DECRYPT),
            wrap=read(a.WRAP),
            unwrap=read(a.UNWRAP),
            sign=read(a.SIGN),
            verify=read(a.VERIFY),
            derive=read(a.DERIVE),
            key_bits=key_bits,
            allowed_mechanisms=self._allowed_mechanisms(key),
        )

    def allowed_mechanisms(self, object_id: str) -> tuple[str, ...] | None:
        return self._with_key(object_id, self._allowed_mechanisms)

    @staticmethod
    def _allowed_mechanisms(key) -> tuple[str, ...] | None:
        try:
            return tuple(sorted(m.name for m in key[Attribute.ALLOWED_MECHANISMS]))
        except p11.AttributeTypeInvalid:
            return None

    # --- cryptography ------------------------------------------------------------------------------------

    def random(self, length: int) -> bytes:
        """Bytes from C_GenerateRandom.  Small requests are served from a per-process pool that the token
        refills RANDOM_POOL_BYTES at a time: one HSM round trip per ~100 data keys instead of one each.
        The pool belongs to one process (a forked child starts empty) and each byte is handed out once."""
        if length > RANDOM_POOL_BYTES // 8:
            return self._call(lambda session: session.generate_random(length * 8))
        with self._pool_lock:
            drawn = self._draw_pool(length)
            if drawn is None:
                self._pool = self._call(lambda session: session.generate_random(RANDOM_POOL_BYTES * 8))
                self._pool_used, self._pool_pid = 0, os.getpid()
                drawn = self._draw_pool(length)
            return drawn

    def pooled_random(self, length: int) -> bytes | None:
        """``random(length)`` when the pool holds enough, without a call to the token; else None (``random``
        then refills it).  Lets the metrics count only the draws that reach the token."""
        if length > RANDOM_POOL_BYTES // 8:
            return None
        with self._pool_lock:
            return self._draw_pool(length)

    def _draw_pool(self, length: int) -> bytes | None:
        """The pool's next ``length`` bytes, or None when it has fewer (or is a parent process's).  Locked."""
        if self._pool_pid != os.getpid() or len(self._pool) - self._pool_used < length:
            return None
        start = self._pool_used
        self._pool_used += length
        return self._pool[start:start + length]

    # AES-GCM goes through hsmkms's own C_Encrypt/C_Decrypt (``native``) on every token: python-pkcs11's
    # size query fails on NSS softoken, and the native path costs the same on SoftHSM (measured).

    def gcm_encrypt(self, object_id: str, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        sealed = self._gcm_direct(object_id, iv, plaintext, aad, decrypting=False)
        if sealed is not None:
            return sealed
        return self._with_key(
            object_id, lambda key: self._lib.gcm_encrypt(self._session.handle, key.handle, iv, plaintext, aad)
        )

    def _gcm_direct(self, object_id: str, iv: bytes, data: bytes, aad: bytes, decrypting: bool) -> bytes | None:
        """The direct path of AES-GCM, every call but a key's first in a process: the module's gcm_encrypt (or
        gcm_decrypt) on the key's cached handle, without the general path's closures and retries
        (a third of the Python around a GCM call).  None when the key's handle is not cached or this process has
        no open session, or when the call failed: the caller then goes through ``_with_key``, which makes the
        call (again) and handles the failure.  A failed C_EncryptInit or C_Encrypt (C_Decrypt...) leaves no
        operation active to trip over.  A failed tag check is answered at once."""
        self._acquire()
        try:
            if self._session is None or self._pid != os.getpid():
                return None
            handle = self._handles.get(object_id)
            if handle is None:
                key = self._keys.get(object_id)
                if key is None:
                    return None
                handle = self._handles[object_id] = key.handle
            try:
                call = self._lib.gcm_decrypt if decrypting else self._lib.gcm_encrypt
                return call(self._session.handle, handle, iv, data, aad)
            except self._tag_mismatch_errors as exc:
                if decrypting:
                    raise DecryptionFailed() from exc
            except p11.PKCS11Error:
                pass
            return None
        finally:
            self._lock.release()

    def gcm_encrypt_token_iv(self, object_id: str, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """AES-GCM where the token makes the IV ([hsm] gcm_iv = "token"); returns (IV, ciphertext || tag).

        How the token hands its IV back is found at the first call (native.TOKEN_IV_STYLES, in order: a token
        that wants no IV refuses the zeroed pIv of the first style) and kept.  A token that makes no IV (it
        took the zeroed pIv as the caller's, as SoftHSM and NSS do) is refused, its output thrown away: a
        fixed IV would repeat under one key."""

        def encrypt(key):
            styles = (self._token_iv_style,) if self._token_iv_style else native.TOKEN_IV_STYLES
            for style in styles:
                try:
                    iv, sealed = self._lib.gcm_encrypt_token_iv(self._session.handle, key.handle, plaintext, aad,
                                                                style)
                except (p11.MechanismParamInvalid, p11.ArgumentsBad):
                    continue  # not this token's way
                if iv:
                    self._token_iv_style = style
                    return iv, sealed
            message = (f'[hsm] gcm_iv = "token", but the token {self._token_label!r} makes no GCM IV (it used the '
                       'IV it was given, or refused to make one).  Set [hsm] gcm_iv = "host" for this token')
            log.error("%s", message)
            raise HsmConfigurationError(message)

        return self._with_key(object_id, encrypt)

    def gcm_decrypt(self, object_id: str, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
        plaintext = self._gcm_direct(object_id, iv, sealed, aad, decrypting=True)
        if plaintext is not None:
            return plaintext

        def decrypt(key):
            try:
                return self._lib.gcm_decrypt(self._session.handle, key.handle, iv, sealed, aad)
            except self._tag_mismatch_errors as exc:
                raise DecryptionFailed() from exc

        return self._with_key(object_id, decrypt)

    # --- asymmetric and HMAC keys ------------------------------------------------------------------------

    def _generate(self, object_id: str, label: str, what: str, make: Callable[[object, bool], object]) -> None:
        """Run ``make(session, restrict)`` to generate a key object (restrict: with CKA_ALLOWED_MECHANISMS), as
        create_aes_key does; a token that cannot make such a key raises HsmUnsupported (a client error)."""

        def generate(session):
            try:
                try:
                    key = make(session, self._restrict_mechanisms)
                except _ATTRIBUTE_REFUSED_ERRORS:
                    if not self._restrict_mechanisms:
                        raise
                    log.warning("the token does not take CKA_ALLOWED_MECHANISMS: keys are made without it")
                    self._restrict_mechanisms = False
                    key = make(session, False)
            except CONFIGURATION_ERRORS as exc:
                log.info("the token %r cannot make %s (%s)", self._token_label, what, type(exc).__name__)
                raise HsmUnsupported(f"this HSM cannot make {what} ({type(exc).__name__})") from None
            self._remember_key(object_id, key, label)

        self._call(generate, exclusive=True)

    def create_key_pair(self, object_id: str, label: str, key_spec: str, usage: str) -> None:
        cka_id, cka_label = self.namespace.cka_id(object_id), self.namespace.cka_label(label)
        spec = keypairs.PAIR_SPECS[key_spec]
        allowed = keypairs.allowed_mechanisms(key_spec, usage, self.profile.oaep_unpad_on_host)

        def make(session, restrict: bool):
            public, private = keypairs.pair_templates(cka_id, cka_label, key_spec, usage, allowed if restrict else None)
            mechanism = Mechanism.RSA_PKCS_KEY_PAIR_GEN if spec.key_type == KeyType.RSA else Mechanism.EC_KEY_PAIR_GEN
            _, private_key = session.generate_keypair(spec.key_type, spec.bits or None, store=True,
                                                      mechanism=mechanism, public_template=public,
                                                      private_template=private)
            return private_key

        self._generate(object_id, label, f"{key_spec} keys", make)

    def create_hmac_key(self, object_id: str, label: str, algorithm: str) -> None:
        cka_id, cka_label = self.namespace.cka_id(object_id), self.namespace.cka_label(label)
        _, length = keypairs.HMAC_MECHANISMS[algorithm]

        def make(session, restrict: bool):
            return session.generate_key(KeyType.GENERIC_SECRET, length * 8, store=True,
                                        mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                                        template=keypairs.hmac_template(cka_id, cka_label, algorithm, restrict))

        self._generate(object_id, label, f"{algorithm} keys", make)

    def public_key(self, object_id: str) -> bytes:
        def read(session):
            with self._token_lock(exclusive=False):
                found = self._objects_with_id(session, object_id, (ObjectClass.PUBLIC_KEY,))
            if not found:
                raise HsmKeyMissing(object_id)
            return keypairs.public_key_der(found[0])

        return self._call(read)

    def sign_digest(self, object_id: str, algorithm: str, digest: bytes) -> bytes:
        mechanism, param, prefix = keypairs.SIGNING[algorithm]
        signature = self._with_key(
            object_id, lambda key: _able(key, "sign")(prefix + digest, mechanism=mechanism, mechanism_param=param))
        return keypairs.ecdsa_der(signature) if mechanism == Mechanism.ECDSA else signature

    def rsa_oaep_decrypt(self, object_id: str, hash_name: str, ciphertext: bytes) -> bytes:
        """With the ``oaep_unpad_on_host`` profile: the raw RSA operation in the token, then the OAEP decoding
        on the host in constant time (hsmkms/hsm/oaep.py).  Either way, one DecryptionFailed for every
        ciphertext that does not decrypt."""

        def decrypt(key):
            modulus = bytes(key[Attribute.MODULUS])
            modulus_bytes = len(modulus)
            # Public checks first: a ciphertext must be a number below the modulus (NSS answers one that is
            # not with CKR_ARGUMENTS_BAD, which otherwise means a parameter the token does not take).
            if len(ciphertext) != modulus_bytes or int.from_bytes(ciphertext, "big") >= int.from_bytes(modulus, "big"):
                raise DecryptionFailed()
            try:
                if self.profile.oaep_unpad_on_host:
                    block = _able(key, "decrypt")(ciphertext, mechanism=Mechanism.RSA_X_509)
                    return oaep_decode(block, modulus_bytes, hash_name)
                return _able(key, "decrypt")(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                                   mechanism_param=keypairs.OAEP_PARAMS[hash_name])
            except (OaepDecodingError, p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.DataInvalid,
                    p11.DataLenRange):
                raise DecryptionFailed() from None

        return self._with_key(object_id, decrypt)

    def hmac(self, object_id: str, algorithm: str, message: bytes) -> bytes:
        mechanism, _ = keypairs.HMAC_MECHANISMS[algorithm]
        return self._with_key(object_id, lambda key: _able(key, "sign")(message, mechanism=mechanism))


    # --- key-material import (BYOK) ----------------------------------------------------------------------

    def create_wrapping_key_pair(self, object_id: str, label: str) -> bytes:
        cka_id, cka_label = self.namespace.cka_id(object_id), self.namespace.cka_label(label)

        def generate(session):
            def make(restrict: bool):
                return session.generate_keypair(
                    KeyType.RSA, WRAPPING_KEY_BITS, store=True,
                    public_template={Attribute.TOKEN: False, Attribute.ENCRYPT: True, Attribute.WRAP: True,
                                     Attribute.VERIFY: False, Attribute.ID: cka_id, Attribute.LABEL: cka_label},
                    private_template=wrapping_private_template(cka_id, cka_label, restrict))

            try:
                public, private = make(self._restrict_mechanisms)
            except _ATTRIBUTE_REFUSED_ERRORS:
                if not self._restrict_mechanisms:
                    raise
                self._restrict_mechanisms = False
                public, private = make(False)
            try:
                der = keypairs.public_key_der(public)
            finally:
                public.destroy()  # a session object; only the private half is kept
            self._wrapping_keys[object_id] = private
            return der

        return self._call(generate, exclusive=True)

    def _wrapping_key(self, session, object_id: str):
        key = self._wrapping_keys.get(object_id)
        if key is None:
            with self._token_lock(exclusive=False):
                found = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                                  Attribute.ID: self.namespace.cka_id(object_id)}))
            if not found:
                raise HsmKeyMissing(object_id)
            key = self._wrapping_keys[object_id] = found[0]
        return key

    def _with_wrapping_key(self, object_id: str, operation: Callable[[object], T], exclusive: bool = False) -> T:
        def run(session):
            try:
                return operation(self._wrapping_key(session, object_id))
            except _STALE_HANDLE_ERRORS:
                self._wrapping_keys.pop(object_id, None)
                return operation(self._wrapping_key(session, object_id))

        return self._call(run, exclusive=exclusive)

    def unwrap_algorithms(self) -> tuple[str, ...]:
        """Measured with a session key pair and throwaway bytes: a token may offer CKM_RSA_PKCS_OAEP yet refuse
        some of its parameters (SoftHSM 2.6.1 takes only SHA-1), which C_GetMechanismInfo does not say."""
        if self._unwrap_algorithms is None:
            self._unwrap_algorithms = self._call(self._measure_unwrap)
        return self._unwrap_algorithms

    def _measure_unwrap(self, session) -> tuple[str, ...]:
        public, private = session.generate_keypair(
            KeyType.RSA, WRAPPING_KEY_BITS, store=False,
            public_template={Attribute.TOKEN: False, Attribute.ENCRYPT: True, Attribute.WRAP: True},
            private_template={Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                              Attribute.UNWRAP: True, Attribute.DECRYPT: False})
        try:
            public_key = serialization.load_der_public_key(keypairs.public_key_der(public))
            throwaway = session.generate_random(MASTER_KEY_BYTES * 8)
            supported = []
            for algorithm, (mechanism, parameter, host_padding) in UNWRAP_MECHANISMS.items():
                try:
                    key = private.unwrap_key(
                        ObjectClass.SECRET_KEY, KeyType.AES, public_key.encrypt(throwaway, host_padding()),
                        mechanism=mechanism, mechanism_param=parameter, store=False,
                        template={Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                                  Attribute.ENCRYPT: True, Attribute.DECRYPT: True})
                except p11.PKCS11Error as exc:
                    log.info("the token does not unwrap with %s (%s)", algorithm, type(exc).__name__)
                    continue
                key.destroy()
                supported.append(algorithm)
            return tuple(supported)
        finally:
            public.destroy()
            private.destroy()

    def unwrap_aes_key(self, wrapping_id: str, algorithm: str, wrapped: bytes, object_id: str, label: str) -> None:
        mechanism, parameter, _ = UNWRAP_MECHANISMS[algorithm]
        cka_id, cka_label = self.namespace.cka_id(object_id), self.namespace.cka_label(label)
        refused = _UNWRAP_REFUSED_ERRORS + ((p11.GeneralError,) if self.profile.general_error_is_tag_mismatch else ())

        def unwrap(private):
            template = master_key_template(cka_id, cka_label, restrict_mechanisms=self._restrict_mechanisms)
            if not self._unwrap_sets_modifiable:
                del template[Attribute.MODIFIABLE]
            try:
                try:
                    key = private.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped, mechanism=mechanism,
                                             mechanism_param=parameter, store=True, template=template)
                except p11.AttributeReadOnly:
                    # SoftHSM 2.6.1 refuses CKA_MODIFIABLE in C_UnwrapKey's template (measured): the imported key
                    # is then modifiable, which cannot make it extractable or readable (PKCS#11 only lets
                    # CKA_SENSITIVE go to true and CKA_EXTRACTABLE to false).
                    if Attribute.MODIFIABLE not in template:
                        raise
                    log.warning("the token refuses CKA_MODIFIABLE when unwrapping: imported keys are modifiable")
                    self._unwrap_sets_modifiable = False
                    del template[Attribute.MODIFIABLE]
                    key = private.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped, mechanism=mechanism,
                                             mechanism_param=parameter, store=True, template=template)
            except refused as exc:
                raise UnwrapFailed(f"the material did not open ({type(exc).__name__})") from exc
            # CKA_VALUE_LEN where the token sets it (NSS does; SoftHSM 2.6.1 leaves it 0 on an unwrapped key).
            length = key[Attribute.VALUE_LEN]
            if length and length != MASTER_KEY_BYTES:
                key.destroy()
                raise UnwrapFailed(f"the material is {length} bytes, not {MASTER_KEY_BYTES}")
            self._remember_key(object_id, key, label)

        self._with_wrapping_key(wrapping_id, unwrap, exclusive=True)

    def destroy_wrapping_key(self, object_id: str) -> None:
        def destroy(private) -> None:
            private.destroy()
            self._wrapping_keys.pop(object_id, None)

        try:
            self._with_wrapping_key(object_id, destroy, exclusive=True)
        except HsmKeyMissing:
            pass  # already gone

    def list_wrapping_key_ids(self) -> dict[str, str]:
        def enumerate_all(session):
            found = {}
            with self._token_lock(exclusive=False):
                for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                    try:
                        owned = self.namespace.owned(obj[Attribute.LABEL], bytes(obj[Attribute.ID]))
                    except _STALE_HANDLE_ERRORS:
                        continue
                    if owned is not None and owned[1].startswith(WRAPPING_LABEL_PREFIX):
                        found[owned[0]] = owned[1]
            return found

        return self._call(enumerate_all)

    def wrapping_key_info(self, object_id: str) -> KeyObjectInfo:
        return self._with_wrapping_key(object_id, lambda key: self._info(object_id, key))


WRAPPING_LABEL_PREFIX = "hsmkms:import:"


def _able(key, operation: str):
    """The key's method for ``operation``; python-pkcs11 gives a key only the methods its CKA_SIGN, CKA_DECRYPT
    ... allow, so a key made for another usage has none: a configuration error, as the token would say."""
    method = getattr(key, operation, None)
    if method is None:
        raise HsmConfigurationError(f"the key object cannot {operation} (its usage is another)")
    return method


# --- token provisioning (SoftHSM and other tokens that can be initialised through PKCS#11) ---------------


def token_exists(module_path: str, token_label: str) -> bool:
    module = _library(module_path)
    if not module.initialised_here:
        module.initialize()
    return any(True for _ in module.lib.get_tokens(token_label=token_label))


def initialise_token(module_path: str, token_label: str, so_pin: str, user_pin: str) -> None:
    """C_InitToken on the first free slot, then C_InitPIN; the PINs travel only through memory.

    python-pkcs11 does not wrap C_InitToken, so that one call goes through ``native``.
    """
    module = _library(module_path)
    if not module.initialised_here:
        module.initialize()
    free = [
        slot
        for slot in module.lib.get_slots(token_present=True)
        if not (slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED)
    ]
    if not free:
        raise HsmError(f"{module_path} offers no free slot for a new token")
    try:
        module.init_token(free[0].slot_id, so_pin, token_label)
    except p11.PKCS11Error as exc:
        raise HsmError(f"C_InitToken failed: {exc}") from None
    with module.lib.get_token(token_label=token_label).open(rw=True, so_pin=so_pin) as session:
        session.init_pin(user_pin)
