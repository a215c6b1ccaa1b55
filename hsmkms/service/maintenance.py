"""Work that runs on a schedule or on an operator's command: destroying keys whose deletion window has
passed, rotating keys that are due, finishing interrupted HSM operations, and ``doctor``.

Every step is idempotent and safe to run from several worker processes at once: a key is destroyed or
rotated only by the process whose conditional metadata update wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from hsmkms.hsm.backend import HsmError
from hsmkms.policy import stored_policy_problem
from hsmkms.service.access_keys import SERVICE_KEY_ID
from hsmkms.service.imports import ImportService
from hsmkms.service.keys import KeyService

log = logging.getLogger(__name__)

CMK_LABEL_PREFIX = "hsmkms:cmk:"
# A journalled creation older than this was interrupted (a live one takes milliseconds).
STALE_CREATE_SECONDS = 600


@dataclass
class DoctorReport:
    missing_objects: list[str] = field(default_factory=list)  # live versions without an HSM object
    orphan_objects: list[str] = field(default_factory=list)  # HSM objects no version or journal names
    dead_objects: list[str] = field(default_factory=list)  # objects of destroyed keys, not yet destroyed
    # Import wrapping keys (private RSA keys) no import token names.  Live tokens' wrapping keys are known.
    orphan_wrapping_keys: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # journal entries: interrupted or still running
    service_key_missing: bool = False
    invalid_policies: list[str] = field(default_factory=list)  # "<access key>: <why>", stored before checks
    # Advice, not an inconsistency: objects usable with any mechanism (made before hsmkms restricted them to
    # AES-GCM; CKA_ALLOWED_MECHANISMS cannot be added to an existing object).  None: the token has no such attribute.
    unrestricted_objects: list[str] | None = field(default_factory=list)
    # Also advice: hsmkms objects of other deployments sharing the token; never touched.
    foreign_objects: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (self.missing_objects or self.orphan_objects or self.dead_objects or self.interrupted
                    or self.orphan_wrapping_keys
                    or self.service_key_missing or self.invalid_policies)

    def lines(self) -> list[str]:
        out = [f"missing HSM object for live key version {v} (cannot be repaired: restore the token)"
               for v in self.missing_objects]
        out += [f"orphan HSM object {v} (no key version names it)" for v in self.orphan_objects]
        out += [f"orphan import wrapping key {v} (no import token names it)" for v in self.orphan_wrapping_keys]
        out += [f"HSM object {v} of a destroyed key still present" for v in self.dead_objects]
        out += [f"interrupted operation on HSM object {v} (or still running: --repair rolls a creation back "
                f"once it is {STALE_CREATE_SECONDS} s old)" for v in self.interrupted]
        if self.service_key_missing:
            out.append("the access-key service key is missing from the token (run hsmkms init)")
        out += [f"access key policy that would be refused today (fix it with access-key policy set): {problem}"
                for problem in self.invalid_policies]
        if self.unrestricted_objects is None:
            out.append("note: the token does not support CKA_ALLOWED_MECHANISMS: with the PIN, master keys can be "
                       "used with other mechanisms than AES-GCM")
        else:
            out += [f"note: HSM object {v} lacks CKA_ALLOWED_MECHANISMS = {{CKM_AES_GCM}} (made before hsmkms set "
                    f"it; rotate its key so that new data is sealed by a restricted version)"
                    for v in self.unrestricted_objects]
        out += [f"note: HSM object {label!r} belongs to another deployment on this token (left alone)"
                for label in self.foreign_objects]
        out += [f"repaired: {item}" for item in self.repaired]
        return out


class Maintenance:
    def __init__(self, keys: KeyService):
        self.keys = keys
        self.store = keys.store
        self.hsm = keys.hsm
        self.imports = ImportService(keys)

    def run_once(self) -> None:
        """One scheduler tick."""
        self.finish_interrupted()
        self.purge_due()
        self.rotate_due()
        self.expire_imports()

    def expire_imports(self) -> None:
        """Destroy imported material past its KeyMaterialExpireUnix, and wrapping keys past their 24 hours."""
        self.imports.expire_materials()
        self.imports.destroy_expired_tokens()

    def purge_due(self) -> list[str]:
        """Destroy every key whose deletion window has passed (and finish destructions a crash interrupted);
        never one whose window has not."""
        self.finish_interrupted(stale_after=None)
        now = self.keys.now()
        destroyed = []
        for key_id in self.store.keys_due_for_deletion(now):
            versions = self.store.destroy_key(key_id, now)  # [] when another process won, or it was cancelled
            if versions:
                self.keys.watch.invalidate()
                for version_id in versions:
                    self._destroy_object(version_id)
                destroyed.append(key_id)
                log.info("destroyed key %s and its %d version(s) in the HSM", key_id, len(versions))
        return destroyed

    def rotate_due(self) -> list[str]:
        rotated = []
        for key in self.store.keys_due_for_rotation(self.keys.now()):
            if self.keys.rotate(key) is not None:
                rotated.append(key.key_id)
        return rotated

    def finish_interrupted(self, stale_after: int | None = STALE_CREATE_SECONDS) -> list[str]:
        """Complete journalled destructions; roll back creations older than ``stale_after`` (None: none)."""
        now = self.keys.now()
        finished = []
        for pending in self.store.pending_objects():
            stale = stale_after is not None and now - pending.created_at >= stale_after
            if pending.purpose == "destroy" or stale:
                self._destroy_object(pending.object_id)
                finished.append(pending.object_id)
        return finished

    def _destroy_object(self, object_id: str) -> None:
        self.hsm.destroy_key(object_id)
        self.store.finish_object(object_id)

    def _unrestricted(self, object_ids: list[str]) -> list[str] | None:
        """The objects usable with any mechanism (no CKA_ALLOWED_MECHANISMS); None when the token lacks it.  hsmkms
        restricts each object it makes to what its kind needs (AES-GCM for master keys; signing or decryption
        mechanisms for key pairs; one HMAC for MAC keys)."""
        unrestricted = []
        for object_id in sorted(object_ids):
            allowed = self.hsm.allowed_mechanisms(object_id)
            if allowed is None:
                return None
            if not allowed:
                unrestricted.append(object_id)
        return unrestricted

    def doctor(self, repair: bool = False) -> DoctorReport:
        """Compare the token's objects with the metadata; with ``repair``, fix what is safe to fix.

        Safe means: destroy objects that no live key version names, finish journalled destructions and roll
        back stale journalled creations.  An object a live version names is never destroyed.
        """
        report = DoctorReport()
        # Only this deployment's objects: another deployment's on a shared token are reported, never destroyed.
        objects = {oid: label for oid, label in self.hsm.list_key_ids().items() if label.startswith(CMK_LABEL_PREFIX)}
        report.foreign_objects = self.hsm.foreign_objects()
        # An EXTERNAL key without imported material has, by design, no object for its version.
        without_material = self.store.versions_without_material()
        versions = {v: live for v, live in self.store.all_versions().items() if v not in without_material}
        pending = {p.object_id: p for p in self.store.pending_objects()}
        report.missing_objects = sorted(v for v, live in versions.items() if live and v not in objects)
        report.dead_objects = sorted(o for o in objects if o in versions and not versions[o] and o not in pending)
        report.orphan_objects = sorted(o for o in objects if o not in versions and o not in pending)
        report.interrupted = sorted(pending)
        tokens = {token.wrapping_id for token in self.store.import_tokens()}
        report.orphan_wrapping_keys = sorted(w for w in self.hsm.list_wrapping_key_ids()
                                             if w not in tokens and w not in pending)
        report.service_key_missing = not self.hsm.has_key(SERVICE_KEY_ID)
        for record in self.store.list_access_keys():
            problem = None if record.policy is None else stored_policy_problem(record.policy)
            if problem is not None:
                report.invalid_policies.append(f"{record.access_key_id}: {problem}")
        report.unrestricted_objects = self._unrestricted(
            [v for v, live in versions.items() if live and v in objects]
            + ([] if report.service_key_missing else [SERVICE_KEY_ID]))
        if repair:
            for object_id in report.orphan_objects + report.dead_objects:
                if versions.get(object_id):  # belt and braces: never a live version's object
                    continue
                try:
                    self.hsm.destroy_key(object_id)
                    report.repaired.append(f"destroyed {object_id}")
                except HsmError as exc:
                    log.error("could not destroy %s: %s", object_id, exc)
            for wrapping_id in report.orphan_wrapping_keys:
                try:
                    self.hsm.destroy_wrapping_key(wrapping_id)
                    report.repaired.append(f"destroyed {wrapping_id}")
                except HsmError as exc:
                    log.error("could not destroy %s: %s", wrapping_id, exc)
            for object_id in self.finish_interrupted():
                report.repaired.append(f"finished {object_id}")
        return report
