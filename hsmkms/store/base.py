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
    last_rotation_at: int | None = None


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
class AccessKeyRecord:
    access_key_id: str
    secret_iv: bytes
    secret_sealed: bytes
    state: str  # Enabled | Disabled
    description: str
    created_at: int


class Store(Protocol):
    def close(self) -> None: ...

    def ping(self) -> bool: ...

    def data_version(self) -> int:
        """Changes whenever another connection (thread or process) committed; cheap enough per request."""

    # keys
    def create_key(self, key: KeyRecord, version: VersionRecord) -> None: ...

    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def get_version(self, version_id: str) -> VersionRecord | None: ...

    def list_keys(self, offset: int, limit: int) -> tuple[list[KeyRecord], int]: ...

    # aliases
    def create_alias(self, alias: AliasRecord) -> None: ...

    def get_alias(self, alias_name: str) -> AliasRecord | None: ...

    def delete_alias(self, alias_name: str) -> bool: ...

    def list_aliases(self, offset: int, limit: int, key_id: str | None = None) -> tuple[list[AliasRecord], int]: ...

    # access keys
    def create_access_key(self, record: AccessKeyRecord) -> None: ...

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None: ...

    def list_access_keys(self) -> list[AccessKeyRecord]: ...
