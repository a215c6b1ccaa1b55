"""``hsmkms hsm check``: what an operator runs before going live, to see whether a token can serve hsmkms.

It goes through hsmkms's own backend (the configured profile, deployment and IV mode), so what passes here is
what the server will do: the module and token, the mechanisms hsmkms needs, a test key made with the master-key
template and its attributes read back, its value unreadable and C_WrapKey refused, AES-GCM with AAD (a wrong
AAD must fail as a failed tag check), random bytes, latency and throughput, one object lookup at the token's
current size, two processes using the token at once.  It removes what it made.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11 import exceptions as p11

from hsmkms.hsm.backend import IMPORT_WRAPPING_ALGORITHMS, DecryptionFailed, HsmError
from hsmkms.hsm.pkcs11 import backend as backend_module
from hsmkms.hsm.pkcs11.backend import MASTER_KEY_MECHANISMS, REQUIREMENTS, Pkcs11Backend

CHECK_LABEL = "hsmkms:check:"
AAD = b'{"hsm":"check"}'
TWO_PROCESS_ROUNDS = 50
PROCESS_TIMEOUT_S = 60


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    required: bool = True  # False: advice; the token can serve hsmkms without it


@dataclass
class CheckReport:
    module: str
    token_label: str
    profile: str
    deployment: str
    gcm_iv: str
    token: str = ""  # manufacturer and model, as the token says
    findings: list[Finding] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(finding.ok for finding in self.findings if finding.required)

    def add(self, name: str, ok: bool, detail: str, required: bool = True) -> bool:
        self.findings.append(Finding(name, ok, detail, required))
        return ok

    def as_dict(self) -> dict:
        document = asdict(self)
        document["ok"] = self.ok
        return document

    def table(self) -> str:
        lines = [
            f"module      {self.module}",
            f"token       {self.token_label!r} {self.token}".rstrip(),
            f"profile     {self.profile}    deployment {self.deployment or '(default)'}    gcm_iv {self.gcm_iv}",
            "",
            f"{'check':<34} {'result':<7} detail",
        ]
        for finding in self.findings:
            result = "ok" if finding.ok else ("FAILED" if finding.required else "note")
            lines.append(f"{finding.name:<34} {result:<7} {finding.detail}")
        if self.figures:
            lines += ["", "figures (this process; two processes for the last)"]
            lines += [f"  {name:<40} {value:,.1f}" for name, value in self.figures.items()]
        verdict = "the token can serve hsmkms" if self.ok else "the token CANNOT serve hsmkms: see FAILED above"
        return "\n".join(lines + ["", verdict])


def run_check(module_path: str, token_label: str, pin_source: Callable[[], str], *, profile=None,
              init_reserved: str | None = None, deployment: str = "", gcm_iv: str = "host",
              lock_path=None, rounds: int = 200) -> CheckReport:
    backend = Pkcs11Backend(module_path, token_label, pin_source, profile=profile, init_reserved=init_reserved,
                            deployment=deployment, gcm_iv=gcm_iv, lock_path=lock_path)
    report = CheckReport(module_path, token_label, backend.profile.name, deployment, gcm_iv)
    if _mechanisms(backend, report):
        try:
            backend.open()
            _exercise(backend, report, rounds)
        except HsmError as exc:
            report.add("the check itself", False, f"{type(exc).__name__}: {exc}")
        finally:
            backend.close()
    return report


def _mechanisms(backend: Pkcs11Backend, report: CheckReport) -> bool:
    """The token is there and offers what hsmkms needs (before logging in)."""
    module = backend_module._library(backend._module_path, backend._init_reserved)
    marker = object()
    try:
        module.acquire(marker)
        token = module.lib.get_token(token_label=report.token_label)
    except p11.PKCS11Error as exc:
        module.release(marker)
        return report.add("token found", False, f"{type(exc).__name__}: no token {report.token_label!r} "
                                                f"in {report.module}")
    try:
        report.token = f"({token.manufacturer_id}, {token.model})"
        report.add("token found", True, f"slot {token.slot.slot_id}")
        all_met = True
        for requirement in REQUIREMENTS:
            name = f"CKM_{requirement.mechanism.name}"
            unmet = backend_module.unmet_requirements_of(module, token.slot.slot_id, requirement)
            if unmet:
                all_met = report.add(name, False, unmet) and all_met
            else:
                info = module.mechanism_info(token.slot.slot_id, requirement.mechanism)
                report.add(name, True, f"keys {info.min_key_size}-{info.max_key_size}, {requirement.purpose}")
        _optional_mechanisms(module, token.slot.slot_id, report)
        return all_met
    finally:
        module.release(marker)


# Mechanisms for asymmetric and HMAC keys: a token without them still serves symmetric keys; CreateKey then
# refuses those key specs with InvalidParameter.
OPTIONAL_MECHANISMS = (
    (Mechanism.RSA_PKCS_KEY_PAIR_GEN, "RSA_2048 and RSA_3072 keys"),
    (Mechanism.RSA_PKCS, "AsymmetricSign RSA_PKCS1_SHA_256"),
    (Mechanism.RSA_PKCS_PSS, "AsymmetricSign RSA_PSS_SHA_256"),
    (Mechanism.RSA_PKCS_OAEP, "AsymmetricDecrypt RSAES_OAEP_SHA_1/SHA_256 (the hashes it takes show at first use)"),
    (Mechanism.RSA_X_509, "AsymmetricDecrypt with OAEP decoded on the host (profile softhsm)"),
    (Mechanism.EC_KEY_PAIR_GEN, "EC_P256 and EC_P256K keys (the curves it takes show at CreateKey)"),
    (Mechanism.ECDSA, "AsymmetricSign ECDSA_SHA_256"),
    (Mechanism.GENERIC_SECRET_KEY_GEN, "HMAC keys"),
    (Mechanism.SHA224_HMAC, "GenerateMac/VerifyMac HMAC_SHA_224"),
    (Mechanism.SHA256_HMAC, "GenerateMac/VerifyMac HMAC_SHA_256"),
    (Mechanism.SHA384_HMAC, "GenerateMac/VerifyMac HMAC_SHA_384"),
    (Mechanism.SHA512_HMAC, "GenerateMac/VerifyMac HMAC_SHA_512"),
)


def _optional_mechanisms(module, slot_id: int, report: CheckReport) -> None:
    """Which mechanisms of asymmetric and HMAC keys the token offers: a note, never a failure, when absent."""
    for mechanism, purpose in OPTIONAL_MECHANISMS:
        try:
            module.mechanism_info(slot_id, mechanism)
            report.add(f"CKM_{mechanism.name}", True, f"offered: {purpose}", required=False)
        except p11.PKCS11Error:
            report.add(f"CKM_{mechanism.name}", False, f"not offered: no {purpose}", required=False)


def _exercise(backend: Pkcs11Backend, report: CheckReport, rounds: int) -> None:
    object_id = f"hsm-check-{uuid.uuid4()}"
    made = False
    try:
        started = time.perf_counter()
        backend.create_aes_key(object_id, CHECK_LABEL + object_id)
        made = True
        report.figures["create a key object (ms)"] = (time.perf_counter() - started) * 1000
        _attributes(backend, report, object_id)
        _not_exportable(backend, report, object_id)
        _gcm(backend, report, object_id)
        drawn = {backend.random(32) for _ in range(16)}
        report.add("C_GenerateRandom", len(drawn) == 16, "16 draws of 32 bytes, all different")
        _unwrap(backend, report)
        _speed(backend, report, object_id, rounds)
        _lookup(backend, report, object_id)
        _two_processes(backend, report, object_id)
    finally:
        if made:
            backend.destroy_key(object_id)
            gone = not backend.has_key(object_id)
            report.add("test key removed", gone, "C_DestroyObject" if gone else "the test key is still there")


def _unwrap(backend: Pkcs11Backend, report: CheckReport) -> None:
    """Which import wrapping algorithms the token unwraps an AES key with (C_UnwrapKey, measured): a note, not a
    requirement -- without any, key-material import (BYOK) is refused, everything else works."""
    offered = backend.unwrap_algorithms()
    missing = [name for name in IMPORT_WRAPPING_ALGORITHMS if name not in offered]
    detail = f"key import with {', '.join(offered) or 'no algorithm'}"
    if missing:
        detail += f"; not {', '.join(missing)} (refused by GetParametersForImport)"
    report.add("C_UnwrapKey (RSA, key import)", bool(offered), detail, required=False)


def _attributes(backend: Pkcs11Backend, report: CheckReport, object_id: str) -> None:
    info = backend.key_info(object_id)
    report.add("test key: AES-256 token object", info.token and info.key_bits == 256, f"{info.key_bits} bits")
    report.add("CKA_SENSITIVE true", info.sensitive and info.always_sensitive,
               f"always sensitive: {info.always_sensitive}")
    report.add("CKA_EXTRACTABLE false", not info.extractable and info.never_extractable,
               f"never extractable: {info.never_extractable}")
    report.add("CKA_MODIFIABLE false", not info.modifiable, "the template cannot be changed later")
    wanted = tuple(sorted(m.name for m in MASTER_KEY_MECHANISMS))
    if info.allowed_mechanisms is None:
        report.add("CKA_ALLOWED_MECHANISMS", False, "the token has no such attribute: with the PIN, the key can be "
                   "used with other mechanisms", required=False)
    else:
        report.add("CKA_ALLOWED_MECHANISMS", info.allowed_mechanisms == wanted,
                   ", ".join(info.allowed_mechanisms) or "any mechanism",
                   required=backend.profile.allowed_mechanisms)


def _not_exportable(backend: Pkcs11Backend, report: CheckReport, object_id: str) -> None:
    def read_value(key) -> str:
        try:
            key[Attribute.VALUE]
        except p11.PKCS11Error as exc:
            return type(exc).__name__
        return ""

    refused = backend._with_key(object_id, read_value)
    report.add("CKA_VALUE unreadable", bool(refused), refused or "the key's value was read")

    def wrap(key) -> str:
        wrapping = key.session.generate_key(KeyType.AES, 256, store=False, template={
            Attribute.TOKEN: False, Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
        try:
            wrapping.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        except p11.PKCS11Error as exc:
            return type(exc).__name__
        finally:
            wrapping.destroy()
        return ""

    try:
        refused = backend._with_key(object_id, wrap)
    except HsmError as exc:  # no session key to wrap with: still no way out found
        refused = f"(no wrapping key: {exc.__cause__!r})"
    if refused:
        report.add("C_WrapKey refused", True, refused)
    elif backend.profile.refuses_wrapping:
        report.add("C_WrapKey refused", False, "the key was wrapped: with the PIN, it can leave the token")
    else:  # a software token (the profile says so): its files and the PIN give the keys anyway
        report.add("C_WrapKey refused", False, f"the key was wrapped, as the {backend.profile.name!r} profile "
                   "expects of this software token: with the PIN, a master key can leave it", required=False)


def _seal(backend: Pkcs11Backend, object_id: str, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    if backend.token_makes_iv:
        return backend.gcm_encrypt_token_iv(object_id, plaintext, aad)
    iv = backend.random(12)
    return iv, backend.gcm_encrypt(object_id, iv, plaintext, aad)


def _gcm(backend: Pkcs11Backend, report: CheckReport, object_id: str) -> None:
    message = backend.random(32)
    iv, sealed = _seal(backend, object_id, message, AAD)
    opened = backend.gcm_decrypt(object_id, iv, sealed, AAD)
    report.add("AES-GCM with AAD", opened == message and len(sealed) == len(message) + 16,
               f"{len(iv) * 8}-bit IV made by the {'token' if backend.token_makes_iv else 'host'}, 128-bit tag")
    try:
        backend.gcm_decrypt(object_id, iv, sealed, AAD + b" ")
        report.add("wrong AAD refused", False, "a wrong AAD decrypted")
    except DecryptionFailed as exc:
        report.add("wrong AAD refused", True, f"as a failed tag check ({type(exc.__cause__).__name__})")
    except HsmError as exc:
        report.add("wrong AAD refused", False, f"as an HSM fault ({exc.__cause__!r}): the profile "
                   f"{backend.profile.name!r} does not read this token's answer as a failed tag check")


def _speed(backend: Pkcs11Backend, report: CheckReport, object_id: str, rounds: int) -> None:
    timings: dict[str, list[float]] = {"random": [], "encrypt": [], "decrypt": []}
    started = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        message = backend.random(32)
        t1 = time.perf_counter()
        iv, sealed = _seal(backend, object_id, message, AAD)
        t2 = time.perf_counter()
        backend.gcm_decrypt(object_id, iv, sealed, AAD)
        t3 = time.perf_counter()
        for name, seconds in (("random", t1 - t0), ("encrypt", t2 - t1), ("decrypt", t3 - t2)):
            timings[name].append(seconds * 1e6)
    elapsed = time.perf_counter() - started
    for name, values in timings.items():
        values.sort()
        report.figures[f"{name} p50 (us)"] = statistics.median(values)
        report.figures[f"{name} p99 (us)"] = values[min(len(values) - 1, int(len(values) * 0.99))]
    report.figures["round trips a second (random+encrypt+decrypt)"] = rounds / elapsed


def _lookup(backend: Pkcs11Backend, report: CheckReport, object_id: str) -> None:
    objects = len(backend.list_key_ids()) + len(backend.foreign_objects())
    backend._forget_key(object_id)  # forget the handle: the next use searches the token
    started = time.perf_counter()
    found = backend.has_key(object_id)
    report.figures[f"one object lookup, {objects} hsmkms objects (ms)"] = (time.perf_counter() - started) * 1000
    report.add("object lookup by CKA_ID", found, f"{objects} hsmkms objects on the token")


def _child(backend: Pkcs11Backend, object_id: str, start, results) -> None:
    try:
        start.wait(PROCESS_TIMEOUT_S)
        began = time.perf_counter()
        for _ in range(TWO_PROCESS_ROUNDS):
            message = backend.random(32)
            iv, sealed = _seal(backend, object_id, message, AAD)
            if backend.gcm_decrypt(object_id, iv, sealed, AAD) != message:
                raise AssertionError("a round trip gave other bytes")
        results.put((True, TWO_PROCESS_ROUNDS / (time.perf_counter() - began)))
    except BaseException as exc:  # reported by the parent
        results.put((False, f"{type(exc).__name__}: {exc}"))
    finally:
        backend.close()


def _two_processes(backend: Pkcs11Backend, report: CheckReport, object_id: str) -> None:
    """Two forked processes, each initialising the module and logging in itself, use the token at once."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    children = [context.Process(target=_child, args=(backend, object_id, start, results)) for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    answers = []
    for _ in children:
        try:
            answers.append(results.get(timeout=PROCESS_TIMEOUT_S))
        except Exception:  # a child that hung or died
            answers.append((False, "no answer"))
    for child in children:
        child.join(10)
        if child.is_alive():
            child.kill()
    ok = all(answer[0] for answer in answers) and all(child.exitcode == 0 for child in children)
    if ok:
        report.figures["round trips a second, two processes"] = sum(answer[1] for answer in answers)
    report.add("two processes at once", ok, f"{TWO_PROCESS_ROUNDS} GCM round trips each" if ok else
               "; ".join(str(answer[1]) for answer in answers if not answer[0]) or "a process failed")
