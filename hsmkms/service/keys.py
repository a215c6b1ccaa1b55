"""Customer master keys: creation in the HSM, lookup by id, alias or ARN, the state gate, aliases."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from hsmkms.errors import (
    AliasAlreadyExists,
    AliasNotFound,
    InvalidParameter,
    KeyNotFound,
)
from hsmkms.hsm.backend import HsmBackend
from hsmkms.service import states
from hsmkms.service.states import KeyState
from hsmkms.service.watch import Cache, StoreWatch
from hsmkms.store.base import AliasRecord, AlreadyExists, KeyRecord, Store, VersionRecord

log = logging.getLogger(__name__)

ALIAS_PREFIX = "alias/"
_ALIAS_NAME = re.compile(r"alias/[A-Za-z0-9_/-]{1,255}\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


@dataclass(frozen=True)
class Identity:
    """Where this service says it lives, as ARNs name it."""

    region: str
    account_id: str

    def key_arn(self, key_id: str) -> str:
        return f"acs:kms:{self.region}:{self.account_id}:key/{key_id}"

    def alias_arn(self, alias_name: str) -> str:
        return f"acs:kms:{self.region}:{self.account_id}:alias/{alias_name.removeprefix(ALIAS_PREFIX)}"


def hsm_label(key_id: str, version_id: str) -> str:
    """The CKA_LABEL of a key version's object: ``pkcs11-tool --list-objects`` shows which key it is."""
    return f"hsmkms:cmk:{key_id}:{version_id}"


def validate_alias_name(name: str, param: str = "AliasName") -> str:
    if not _ALIAS_NAME.match(name) or name.startswith("alias/acs"):
        raise InvalidParameter(
            param, "An alias is alias/ followed by 1-255 letters, digits, '_', '-' or '/', not alias/acs..."
        )
    return name


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

    # --- creation ----------------------------------------------------------------------------------------

    def create_key(self, *, key_spec: str, key_usage: str, origin: str, protection_level: str,
                   description: str) -> KeyRecord:
        key_id, version_id = str(uuid.uuid4()), str(uuid.uuid4())
        now = int(self.clock())
        # HSM object first: a crash before the metadata commit leaves an unreferenced object (which
        # `hsmkms doctor` reports), never metadata naming a key the HSM does not hold.
        self.hsm.create_aes_key(version_id, hsm_label(key_id, version_id))
        record = KeyRecord(
            key_id=key_id,
            state=KeyState.ENABLED,
            key_spec=key_spec,
            key_usage=key_usage,
            origin=origin,
            protection_level=protection_level,
            description=description,
            creator=self.identity.account_id,
            created_at=now,
            primary_version_id=version_id,
            last_rotation_at=now,
        )
        try:
            self.store.create_key(record, VersionRecord(version_id, key_id, now))
        except BaseException:
            self._destroy_quietly(version_id)
            raise
        log.info("created key %s (version %s)", key_id, version_id)
        return record

    def _destroy_quietly(self, version_id: str) -> None:
        try:
            self.hsm.destroy_key(version_id)
        except Exception:
            log.exception("could not remove HSM object %s after a failed create; doctor will report it",
                          version_id)

    # --- lookup ------------------------------------------------------------------------------------------

    def resolve(self, key_ref: str) -> KeyRecord:
        """A key by id, ``alias/...``, key ARN or alias ARN; Forbidden.KeyNotFound / AliasNotFound."""
        if key_ref.startswith("acs:"):
            key_ref = self._arn_target(key_ref)
        if key_ref.startswith(ALIAS_PREFIX):
            return self._key(self._alias_target(key_ref))
        return self._key(key_ref)

    def usable(self, key_ref: str, action: str) -> KeyRecord:
        """The one choke point: resolve the key and refuse it when its state forbids ``action``."""
        key = self.resolve(key_ref)
        states.check(action, key.state)
        return key

    def version(self, version_id: str) -> VersionRecord:
        version = self._versions.get(
            version_id, lambda: self.store.get_version(version_id) if _UUID.match(version_id) else None
        )
        if version is None:
            raise KeyNotFound()
        return version

    def _key(self, key_id: str) -> KeyRecord:
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

    def _arn_target(self, arn: str) -> str:
        parts = arn.split(":", 4)
        if len(parts) != 5 or parts[:2] != ["acs", "kms"]:
            raise KeyNotFound()
        _, _, region, account, resource = parts
        if (region, account) != (self.identity.region, self.identity.account_id):
            raise KeyNotFound()
        kind, _, name = resource.partition("/")
        if kind == "key" and name:
            return name
        if kind == "alias" and name:
            return ALIAS_PREFIX + name
        raise KeyNotFound()

    def list_keys(self, offset: int, limit: int) -> tuple[list[KeyRecord], int]:
        return self.store.list_keys(offset, limit)

    # --- aliases -----------------------------------------------------------------------------------------

    def create_alias(self, alias_name: str, key_ref: str) -> KeyRecord:
        validate_alias_name(alias_name)
        key = self.usable(key_ref, "CreateAlias")
        try:
            self.store.create_alias(AliasRecord(alias_name, key.key_id, int(self.clock())))
        except AlreadyExists:
            raise AliasAlreadyExists() from None
        self.watch.invalidate()
        return key

    def delete_alias(self, alias_name: str) -> None:
        if not self.store.delete_alias(alias_name):
            raise AliasNotFound()
        self.watch.invalidate()

    def list_aliases(self, offset: int, limit: int, key_id: str | None = None) -> tuple[list[AliasRecord], int]:
        return self.store.list_aliases(offset, limit, key_id)
