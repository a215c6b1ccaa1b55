"""The metadata store: records it keeps, the interface, and its errors.

The store holds what the HSM does not: which keys and versions exist, their state and dates, aliases and
access keys.  It never holds key material; an access key's secret is stored sealed by an HSM service key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store cannot serve the request now (locked, read-only, full, unreachable)."""


class AlreadyExists(Exception):
    """A unique name (alias, access key id) is taken."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    state: str
    key_spec: str
    key_usage: str
    origin: str
    protection_level: str
    description: str
    creator: str
    created_at: int  # unix seconds
    primary_version_id: str
    delete_at: int | None = None
    deletion_protection: bool = False
    deletion_protection_description: str = ""
    rotation_interval: int | None = None  # seconds; None when automatic rotation is off
    last_rotation_at: int | None = None  # creation time of the newest version
    destroyed_at: int | None = None  # set when the window passed and the HSM objects were destroyed


@dataclass(frozen=True, slots=True)
class VersionRecord:
    version_id: str
    key_id: str
    created_at: int


@dataclass(frozen=True, slots=True)
class AliasRecord:
    alias_name: str
    key_id: str
    created_at: int


@dataclass(frozen=True, slots=True)
class TagRecord:
    key_id: str
    tag_key: str
    tag_value: str


@dataclass(frozen=True, slots=True)
class PendingObject:
    """An HSM object being created or destroyed: written before the HSM call, removed after the commit.

    It lets recovery tell an interrupted operation from a stray object (see ``service/maintenance.py``).
    """

    object_id: str
    key_id: str
    purpose: str  # "create" | "destroy"
    created_at: int


@dataclass(frozen=True, slots=True)
class ImportTokenRecord:
    """What GetParametersForImport handed out: the token (a random id), the key it is for, the wrapping key
    pair's HSM object and the algorithm the material must be wrapped with."""

    token_id: str
    key_id: str
    wrapping_id: str
    algorithm: str
    created_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class KeyMaterialRecord:
    """An EXTERNAL key's imported material: never its value, only a check value (GCM of a fixed block under
    it, made in the HSM) that a re-import must match.  Kept while the material is absent (deleted, expired)."""

    key_id: str
    check_value: bytes
    present: bool
    expires_at: int | None  # None: never
    imported_at: int


@dataclass(frozen=True)
class KeyFilter:
    """ListKeys ``Filters``: values of one field are OR-ed, fields are AND-ed; None = no condition."""

    key_ids: frozenset[str] | None = None
    states: frozenset[str] | None = None
    key_specs: frozenset[str] | None = None
    key_usages: frozenset[str] | None = None
    protection_levels: frozenset[str] | None = None
    creators: frozenset[str] | None = None
    alias_names: frozenset[str] | None = None
    tag_keys: frozenset[str] | None = None
    tag_values: frozenset[str] | None = None
    match_nothing: bool = False  # a condition no key can meet (CreatorType=Service, a DKMS instance)


@dataclass(frozen=True, slots=True)
class AccessKeyRecord:
    access_key_id: str
    secret_iv: bytes
    secret_sealed: bytes
    state: str  # Enabled | Disabled
    description: str
    created_at: int
    policy: str | None = None  # RAM-style policy document; None (keys made before policies) = allow all


class JobLock(Protocol):
    """Who runs the background jobs (purge, rotation, recovery)."""

    def held(self) -> bool:
        """True when this process may run them now (taking the lock when it is free)."""

    def close(self) -> None: ...


class NonceCache(Protocol):
    """Signature nonces seen inside the clock window, shared by every worker (and node) that serves requests.

    Implementations: ``nonces.NonceStore`` (a file on one machine), ``postgres.PostgresNonces`` and
    ``redis_nonces.RedisNonces`` (shared by several nodes).  One that cannot answer raises StoreError (503):
    a request is never let through unchecked.
    """

    def claim(self, access_key_id: str, nonce: str, now: float, expires: float) -> bool:
        """Record the nonce until ``expires`` (and a grace period); False when it is already recorded."""

    def prepare(self, now: float) -> None:
        """Create or resize what the cache needs (``hsmkms init`` and ``serve`` call it before serving)."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class Store(Protocol):
    def close(self) -> None: ...

    def migrate(self) -> None:
        """Create or upgrade the schema; safe to run on every start, from several processes or nodes at once."""

    def ping(self) -> bool: ...

    def data_version(self) -> int:
        """Changes whenever anyone committed; may cost a round trip to the database (asked once a second)."""

    def change_counter(self) -> bytes:
        """Changes whenever anyone committed, as far as this process has heard; a memory read, for every
        request.  A store that may have missed a change returns a new value at each call."""

    def job_lock(self) -> JobLock:
        """The lock that decides which process runs the background jobs."""

    # keys and versions (destroyed keys and their versions are invisible to get_* and list_*)
    def begin_object(self, pending: PendingObject) -> None: ...

    def finish_object(self, object_id: str) -> None: ...

    def pending_objects(self) -> list[PendingObject]: ...

    def create_key(self, key: KeyRecord, version: VersionRecord, tags: list[TagRecord]) -> None: ...

    def add_version(self, version: VersionRecord, expected_last_rotation: int | None) -> bool:
        """Make ``version`` the primary one when the key is still Enabled and its last rotation unchanged."""

    def update_key(self, key_id: str, changes: dict, expected_state: str) -> bool:
        """Apply ``changes`` when the key still is in ``expected_state``; False otherwise."""

    def destroy_key(self, key_id: str, now: int) -> list[str]:
        """Mark a due PendingDeletion key destroyed, drop its aliases and tags, and record every version
        object as pending destruction; returns those object ids ([] when the key was not due)."""

    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def get_version(self, version_id: str) -> VersionRecord | None: ...

    def list_keys(self, offset: int, limit: int, where: KeyFilter | None = None) -> tuple[list[KeyRecord], int]: ...

    def list_versions(self, key_id: str, offset: int, limit: int) -> tuple[list[VersionRecord], int]: ...

    def live_keys_and_versions(self, limit: int) -> tuple[list[KeyRecord], list[VersionRecord]]: ...

    def all_versions(self) -> dict[str, bool]:
        """Every version id ever made -> whether its key is live (for doctor)."""

    def keys_due_for_deletion(self, now: int) -> list[str]: ...

    def keys_due_for_rotation(self, now: int) -> list[KeyRecord]: ...

    # key-material import
    def add_import_token(self, token: ImportTokenRecord) -> None:
        """Record a token, and end the journal entry of its wrapping key pair, at once."""

    def get_import_token(self, token_id: str) -> ImportTokenRecord | None: ...

    def expired_import_tokens(self, now: int) -> list[ImportTokenRecord]: ...

    def import_tokens(self) -> list[ImportTokenRecord]:
        """Every recorded import token (for doctor)."""

    def delete_import_token(self, token_id: str) -> None: ...

    def get_key_material(self, key_id: str) -> KeyMaterialRecord | None: ...

    def record_key_material(self, material: KeyMaterialRecord, version_id: str, expected_state: str) -> bool:
        """Record present material when the key is still in ``expected_state``: a PendingImport key becomes
        Enabled, and the journal entry of ``version_id`` ends.  False when the key changed."""

    def clear_key_material(self, key_id: str, expected_state: str, destroy: PendingObject) -> bool:
        """Mark the material absent (the check value stays) and journal the destruction of its object
        (``destroy``) at once, when the key is still in ``expected_state``; an Enabled or Disabled key becomes
        PendingImport.  False when the key changed (nothing written)."""

    def expired_materials(self, now: int) -> list[str]:
        """Keys whose present material has expired."""

    def versions_without_material(self) -> set[str]:
        """Version ids of live EXTERNAL keys whose material is absent (no HSM object, by design)."""

    # tags
    def set_tags(self, tags: list[TagRecord]) -> None: ...

    def remove_tags(self, key_id: str, tag_keys: list[str] | None) -> None:
        """Remove the named tags (all of them for None)."""

    def list_tags(self, key_ids: list[str] | None = None) -> list[TagRecord]: ...

    # aliases
    def create_alias(self, alias: AliasRecord) -> None: ...

    def update_alias(self, alias_name: str, key_id: str, expected_key_id: str) -> bool:
        """Point the alias at ``key_id`` if it still points at ``expected_key_id``."""

    def get_alias(self, alias_name: str) -> AliasRecord | None: ...

    def delete_alias(self, alias_name: str, expected_key_id: str) -> bool:
        """Delete the alias if it still points at ``expected_key_id``."""

    def list_aliases(self, offset: int, limit: int, key_id: str | None = None) -> tuple[list[AliasRecord], int]: ...

    # access keys
    def create_access_key(self, record: AccessKeyRecord) -> None: ...

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None: ...

    def list_access_keys(self) -> list[AccessKeyRecord]: ...

    def set_access_key_state(self, access_key_id: str, state: str) -> bool: ...

    def delete_access_key(self, access_key_id: str) -> bool: ...

    def set_access_key_policy(self, access_key_id: str, policy: str) -> bool: ...
