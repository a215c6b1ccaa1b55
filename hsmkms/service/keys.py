"""Customer master keys: creation in the HSM, lookup by id, alias or ARN, the key-state gate, the lifecycle
(enable, disable, scheduled deletion, protection), versions and rotation policy, and aliases.

Every HSM object is journalled before it is made (``store.begin_object``) and the journal entry is removed in
the same transaction that records the version, so a crash at any point leaves either a complete key or an
entry that recovery rolls back (``service/maintenance.py``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hsmkms.errors import (
    AliasAlreadyExists,
    AliasNotFound,
    DeletionProtected,
    InvalidParameter,
    KeyNotFound,
    KeyVersionNotFound,
    KmsError,
    MissingParameter,
    StateModifiedFailed,
    UnsupportedOperation,
)
from hsmkms.hsm.backend import HsmBackend, HsmUnsupported
from hsmkms.service import states
from hsmkms.service.states import KeyState
from hsmkms.service.watch import Cache, StoreWatch
from hsmkms.store.base import (
    AliasRecord,
    AlreadyExists,
    KeyFilter,
    KeyRecord,
    PendingObject,
    Store,
    TagRecord,
    VersionRecord,
)

log = logging.getLogger(__name__)

ALIAS_PREFIX = "alias/"
EXTERNAL_ORIGIN = "EXTERNAL"
DAY = 86400
ROTATION_MIN_DAYS, ROTATION_MAX_DAYS = 7, 730
DELETION_MIN_DAYS, DELETION_MAX_DAYS = 7, 366
WARM_KEYS = 100_000
_ALIAS_NAME = re.compile(r"alias/[A-Za-z0-9_/-]{1,255}\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_INTERVAL = re.compile(r"([0-9]{1,12})([dhms])\Z")
_UNIT_SECONDS = {"d": DAY, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class Identity:
    """Where this service says it lives, as ARNs name it."""

    region: str
    account_id: str

    def key_arn(self, key_id: str) -> str:
        return f"acs:kms:{self.region}:{self.account_id}:key/{key_id}"

    def alias_arn(self, alias_name: str) -> str:
        return f"acs:kms:{self.region}:{self.account_id}:alias/{alias_name.removeprefix(ALIAS_PREFIX)}"


@dataclass(frozen=True)
class KeyLookup:
    """A key reference resolved once: the key (None when nothing by that name exists), every ARN it was
    reached by (what a policy must allow), and the not-found error to answer once authorization passed."""

    arns: tuple[str, ...]
    key: KeyRecord | None = None
    missing: KmsError | None = None

    def record(self) -> KeyRecord:
        if self.key is None:
            raise self.missing or KeyNotFound()
        return self.key


def hsm_label(key_id: str, version_id: str) -> str:
    """The CKA_LABEL of a key version's object: ``pkcs11-tool --list-objects`` shows which key it is."""
    return f"hsmkms:cmk:{key_id}:{version_id}"


def validate_alias_name(name: str, param: str = "AliasName") -> str:
    if not _ALIAS_NAME.match(name) or name.startswith("alias/acs"):
        raise InvalidParameter(
            param, "An alias is alias/ followed by 1-255 letters, digits, '_', '-' or '/', not alias/acs..."
        )
    return name


def parse_rotation_interval(text: str, param: str = "RotationInterval") -> int:
    """``<int><d|h|m|s>`` (``7d`` = ``604800s``) as seconds, between 7 and 730 days."""
    match = _INTERVAL.match(text)
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else -1
    if not ROTATION_MIN_DAYS * DAY <= seconds <= ROTATION_MAX_DAYS * DAY:
        raise InvalidParameter(param, f"Use <number><d|h|m|s> between {ROTATION_MIN_DAYS} and "
                                      f"{ROTATION_MAX_DAYS} days, e.g. 30d.")
    return seconds


class KeyService:
    def __init__(self, store: Store, hsm: HsmBackend, identity: Identity, watch: StoreWatch,
                 clock: Callable[[], float]):
        self.store = store
        self.hsm = hsm
        self.identity = identity
        self.watch = watch
        self.clock = clock
        self._keys: Cache[str, KeyRecord] = Cache(watch)
        self._aliases: Cache[str, str] = Cache(watch)
        self._versions: Cache[str, VersionRecord] = Cache(watch)

    def now(self) -> int:
        return int(self.clock())

    # --- creation ----------------------------------------------------------------------------------------

    def create_key(self, *, key_spec: str, key_usage: str, origin: str, protection_level: str,
                   description: str, rotation_interval: int | None = None,
                   tags: Iterable[tuple[str, str]] = ()) -> KeyRecord:
        if rotation_interval is not None and key_spec != "Aliyun_AES_256":
            raise InvalidParameter("EnableAutomaticRotation", "Automatic rotation is only for symmetric keys.")
        key_id = str(uuid.uuid4())
        external = origin == EXTERNAL_ORIGIN
        if external and key_spec != "Aliyun_AES_256":
            raise InvalidParameter("Origin", "Only Aliyun_AES_256 keys take imported material here.")
        if external and rotation_interval is not None:
            raise InvalidParameter("EnableAutomaticRotation", "Keys with imported material (Origin=EXTERNAL) "
                                                              "are not rotated.")
        # An EXTERNAL key gets its one version id now and its HSM object when material is imported
        # (service/imports.py).
        version_id = str(uuid.uuid4()) if external else self._create_object(key_id, key_spec, key_usage)
        now = self.now()
        record = KeyRecord(
            key_id=key_id,
            state=KeyState.PENDING_IMPORT if external else KeyState.ENABLED,
            key_spec=key_spec,
            key_usage=key_usage,
            origin=origin,
            protection_level=protection_level,
            description=description,
            creator=self.identity.account_id,
            created_at=now,
            primary_version_id=version_id,
            rotation_interval=rotation_interval,
            last_rotation_at=now,
        )
        try:
            self.store.create_key(record, VersionRecord(version_id, key_id, now),
                                  [TagRecord(key_id, k, v) for k, v in tags])
        except BaseException:
            if not external:
                self._abandon_object(version_id)
            raise
        log.info("created key %s (version %s)", key_id, version_id)
        return record

    def _create_object(self, key_id: str, key_spec: str = "Aliyun_AES_256", key_usage: str = "ENCRYPT/DECRYPT") -> str:
        """Journal, then generate, a new version object in the HSM; returns its (version) id."""
        version_id = str(uuid.uuid4())
        self.store.begin_object(PendingObject(version_id, key_id, "create", self.now()))
        try:
            self._generate_object(version_id, hsm_label(key_id, version_id), key_spec, key_usage)
        except HsmUnsupported:  # what the token answered is in the server log
            self._abandon_object(version_id)
            raise InvalidParameter("KeySpec", f"This HSM does not support {key_spec} keys.") from None
        except BaseException:
            self._abandon_object(version_id)
            raise
        return version_id

    def _generate_object(self, version_id: str, label: str, key_spec: str, key_usage: str) -> None:
        """The HSM object of one key version: an AES-256 key, a key pair, or an HMAC key."""
        if key_spec == "Aliyun_AES_256":
            self.hsm.create_aes_key(version_id, label)
        elif key_usage == "GENERATE/VERIFY_MAC":
            self.hsm.create_hmac_key(version_id, label, key_spec)
        else:
            self.hsm.create_key_pair(version_id, label, key_spec, key_usage)

    def _abandon_object(self, version_id: str) -> None:
        """Undo a version object that will not be recorded; what fails here is left to recovery."""
        try:
            self.hsm.destroy_key(version_id)
            self.store.finish_object(version_id)
        except Exception as exc:  # the HSM or the store is failing right now; the journal remembers
            log.error("could not undo HSM object %s (%s); recovery will remove it", version_id, exc)

    # --- lookup ------------------------------------------------------------------------------------------

    def warm(self, limit: int = WARM_KEYS) -> int:
        """Read the newest ``limit`` keys and versions into the caches at once (a worker starting), so that
        the first request for each key does not read the database.  Returns how many keys were read."""
        generation = self.watch.generation
        keys, versions = self.store.live_keys_and_versions(limit)
        self._keys.fill({k.key_id: k for k in keys}, generation)
        self._versions.fill({v.version_id: v for v in versions}, generation)
        return len(keys)

    def lookup(self, key_ref: str) -> KeyLookup:
        """Resolve a KeyId (key id, ``alias/...``, key ARN, alias ARN, or a key ARN with an alias path) once.

        A key reached through an alias carries both ARNs, so that a policy can grant or deny either; when
        nothing by that name exists, the ARN the caller named is what authorization checks, so a caller
        without permission learns nothing about what exists."""
        try:
            kind, name = self._parse_ref(key_ref)
        except KeyNotFound as err:  # an ARN of another region or account, or not of a key or alias
            return KeyLookup((key_ref,), missing=err)
        if kind == "alias":
            alias_arn = self.identity.alias_arn(name)
            try:
                key = self.key(self._alias_target(name))
            except (KeyNotFound, AliasNotFound) as err:
                return KeyLookup((alias_arn,), missing=err)
            return KeyLookup((self.identity.key_arn(key.key_id), alias_arn), key)
        try:
            key = self.key(name)
        except KeyNotFound as err:
            named = key_ref if key_ref.startswith("acs:") else self.identity.key_arn(key_ref)
            return KeyLookup((named,), missing=err)
        return KeyLookup((self.identity.key_arn(key.key_id),), key)

    def alias_lookup(self, alias_name: str) -> KeyLookup:
        """The key an alias points to now, with the alias ARN and that key's ARN (AliasNotFound if none;
        InvalidParameter for a name no alias can have)."""
        alias_arn = self.identity.alias_arn(alias_name)
        try:
            key = self.key(self._alias_target(validate_alias_name(alias_name)))
        except (KeyNotFound, AliasNotFound, InvalidParameter) as err:
            return KeyLookup((alias_arn,), missing=err)
        return KeyLookup((alias_arn, self.identity.key_arn(key.key_id)), key)

    def resolve(self, key_ref: str) -> KeyRecord:
        """A key by any form ``lookup`` takes; Forbidden.KeyNotFound / AliasNotFound."""
        return self.lookup(key_ref).record()

    def version(self, version_id: str) -> VersionRecord:
        version = self._versions.get(
            version_id, lambda: self.store.get_version(version_id) if _UUID.match(version_id) else None
        )
        if version is None:
            raise KeyNotFound()
        return version

    def key(self, key_id: str) -> KeyRecord:
        """A key by its id alone, as a version record names it (Forbidden.KeyNotFound)."""
        key = self._keys.get(key_id, lambda: self.store.get_key(key_id) if _UUID.match(key_id) else None)
        if key is None:
            raise KeyNotFound()
        return key

    def _alias_target(self, alias_name: str) -> str:
        def load() -> str | None:
            alias = self.store.get_alias(alias_name)
            return alias.key_id if alias else None

        key_id = self._aliases.get(alias_name, load)
        if key_id is None:
            raise AliasNotFound()
        return key_id

    def _parse_ref(self, key_ref: str) -> tuple[str, str]:
        """("alias", "alias/<name>") or ("key", <key id>) for any form of KeyId; KeyNotFound for an ARN that
        is malformed or names another region or account."""
        if key_ref.startswith("acs:"):
            parts = key_ref.split(":", 4)
            if len(parts) != 5 or parts[:2] != ["acs", "kms"]:
                raise KeyNotFound()
            _, _, region, account, resource = parts
            if (region, account) != (self.identity.region, self.identity.account_id):
                raise KeyNotFound()
            kind, _, name = resource.partition("/")
            if kind == "alias" and name:
                return "alias", ALIAS_PREFIX + name
            if kind != "key" or not name:
                raise KeyNotFound()
            key_ref = name  # a key ARN may carry an alias path: acs:kms:<region>:<account>:key/alias/<name>
        if key_ref.startswith(ALIAS_PREFIX):
            return "alias", key_ref
        return "key", key_ref

    def list_keys(self, offset: int, limit: int, where: KeyFilter | None = None) -> tuple[list[KeyRecord], int]:
        return self.store.list_keys(offset, limit, where)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def _change(self, key: KeyRecord, action: str, changes: dict) -> KeyRecord:
        """Apply ``changes`` after the state gate, atomically against a concurrent state change."""
        states.check(action, key.state)
        if not self.store.update_key(key.key_id, changes, expected_state=key.state):
            raise StateModifiedFailed()
        self.watch.invalidate()
        return self.key(key.key_id)

    def describe(self, key: KeyRecord) -> KeyRecord:
        states.check("DescribeKey", key.state)
        return key

    def enable(self, key: KeyRecord) -> KeyRecord:
        return self._change(key, "EnableKey", {"state": KeyState.ENABLED})

    def disable(self, key: KeyRecord) -> KeyRecord:
        return self._change(key, "DisableKey", {"state": KeyState.DISABLED})

    def update_description(self, key: KeyRecord, description: str) -> KeyRecord:
        return self._change(key, "UpdateKeyDescription", {"description": description})

    def set_deletion_protection(self, key: KeyRecord, enabled: bool, description: str) -> KeyRecord:
        return self._change(key, "SetDeletionProtection", {
            "deletion_protection": enabled,
            "deletion_protection_description": description if enabled else "",
        })

    def schedule_deletion(self, key: KeyRecord, days: int) -> KeyRecord:
        if not DELETION_MIN_DAYS <= days <= DELETION_MAX_DAYS:
            raise InvalidParameter("PendingWindowInDays",
                                   f"It must be from {DELETION_MIN_DAYS} to {DELETION_MAX_DAYS}.")
        states.check("ScheduleKeyDeletion", key.state)
        if key.deletion_protection:
            raise DeletionProtected()
        return self._change(key, "ScheduleKeyDeletion",
                            {"state": KeyState.PENDING_DELETION, "delete_at": self.now() + days * DAY})

    def cancel_deletion(self, key: KeyRecord) -> KeyRecord:
        return self._change(key, "CancelKeyDeletion", {"state": KeyState.ENABLED, "delete_at": None})

    def update_rotation_policy(self, key: KeyRecord, enabled: bool, interval: int | None) -> KeyRecord:
        if enabled and interval is None:
            raise MissingParameter("RotationInterval")
        states.check("UpdateRotationPolicy", key.state)
        if enabled and key.key_spec != "Aliyun_AES_256":
            raise UnsupportedOperation("Automatic rotation is only for symmetric keys.")
        self._refuse_external(key)
        return self._change(key, "UpdateRotationPolicy", {"rotation_interval": interval if enabled else None})

    # --- versions ----------------------------------------------------------------------------------------

    @staticmethod
    def _refuse_external(key: KeyRecord) -> None:
        """Keys with imported material have one version (as in Alibaba Cloud): no rotation, no new versions."""
        if key.origin == EXTERNAL_ORIGIN:
            raise UnsupportedOperation("Keys with imported material (Origin=EXTERNAL) have one version: they "
                                       "cannot be rotated.")

    def create_version(self, key: KeyRecord, attempts: int = 3) -> VersionRecord:
        states.check("CreateKeyVersion", key.state)
        self._refuse_external(key)
        if key.key_usage == "GENERATE/VERIFY_MAC":
            # VerifyMac uses the primary version: a new one would fail every MAC made before it.
            raise UnsupportedOperation("HMAC keys have one version.")
        for _ in range(attempts):
            version = self.rotate(key)
            if version is not None:
                return version
            # Another process changed the key meanwhile (rotated it): read it again from the store itself,
            # since this process's cache may not have seen that change yet.
            key = self.store.get_key(key.key_id)
            if key is None:
                raise KeyNotFound()
            states.check("CreateKeyVersion", key.state)
        raise StateModifiedFailed()

    def rotate(self, key: KeyRecord) -> VersionRecord | None:
        """A new primary version for ``key``; None when the key changed since it was read (nothing made)."""
        version_id = self._create_object(key.key_id, key.key_spec, key.key_usage)
        version = VersionRecord(version_id, key.key_id, self.now())
        try:
            added = self.store.add_version(version, expected_last_rotation=key.last_rotation_at)
        except BaseException:
            self._abandon_object(version_id)
            raise
        if not added:
            self._abandon_object(version_id)
            return None
        self.watch.invalidate()
        log.info("key %s has a new primary version %s", key.key_id, version_id)
        return version

    def describe_version(self, key: KeyRecord, version_id: str) -> VersionRecord:
        states.check("DescribeKeyVersion", key.state)
        try:
            version = self.version(version_id)
        except KeyNotFound:
            raise KeyVersionNotFound() from None
        if version.key_id != key.key_id:
            raise KeyVersionNotFound()
        return version

    def list_versions(self, key: KeyRecord, offset: int, limit: int) -> tuple[list[VersionRecord], int]:
        states.check("ListKeyVersions", key.state)
        return self.store.list_versions(key.key_id, offset, limit)

    # --- aliases -----------------------------------------------------------------------------------------

    def create_alias(self, alias_name: str, key: KeyRecord) -> KeyRecord:
        validate_alias_name(alias_name)
        states.check("CreateAlias", key.state)
        try:
            self.store.create_alias(AliasRecord(alias_name, key.key_id, self.now()))
        except AlreadyExists:
            raise AliasAlreadyExists() from None
        self.watch.invalidate()
        return key

    def update_alias(self, alias_name: str, current: KeyRecord, key: KeyRecord) -> KeyRecord:
        """Point ``alias_name`` from ``current`` (the key it was authorized as pointing to) to ``key``; refused
        when the alias moved meanwhile, so the call never acts on a key it was not authorized for."""
        validate_alias_name(alias_name)
        states.check("UpdateAlias", key.state)  # only the target key's state matters
        if not self.store.update_alias(alias_name, key.key_id, expected_key_id=current.key_id):
            self._alias_moved(alias_name)
        self.watch.invalidate()
        return key

    def delete_alias(self, alias_name: str, current: KeyRecord) -> None:
        """Delete ``alias_name`` if it still points to ``current`` (the key it was authorized as pointing to)."""
        if not self.store.delete_alias(alias_name, expected_key_id=current.key_id):
            self._alias_moved(alias_name)
        self.watch.invalidate()

    def _alias_moved(self, alias_name: str) -> None:
        if self.store.get_alias(alias_name) is None:
            raise AliasNotFound()
        raise StateModifiedFailed()

    def list_aliases(self, offset: int, limit: int, key: KeyRecord | None = None) -> tuple[list[AliasRecord], int]:
        if key is not None:
            states.check("ListAliasesByKeyId", key.state)
        return self.store.list_aliases(offset, limit, None if key is None else key.key_id)
