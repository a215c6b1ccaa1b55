"""Access keys (AccessKeyId + AccessKeySecret) that sign requests, and the policy each one carries.

A secret is stored sealed by an AES-GCM service key that lives in the HSM (AAD: the AccessKeyId, so a
sealed secret cannot be moved to another id); the database alone reveals nothing.  A process unseals a
secret once and keeps it in memory with the parsed policy; the cache is dropped when the store changes
(see ``watch``), so a key disabled or re-scoped from the CLI is refused by every worker at once.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from hsmkms.errors import ForbiddenAccessKey, InvalidAccessKeyIdNotFound
from hsmkms.hsm.backend import HsmBackend
from hsmkms.policy import ALLOW_ALL, Policy, load_stored_policy, parse_policy
from hsmkms.service.watch import Cache, StoreWatch
from hsmkms.store.base import AccessKeyRecord, Store

log = logging.getLogger(__name__)

SERVICE_KEY_ID = "hsmkms-service-access-key-secrets"
SERVICE_KEY_LABEL = "hsmkms:service:access-key-secrets"
ID_PREFIX = "LTAI"  # Alibaba AccessKey ids start so; some tools check it
_ALPHABET = string.ascii_letters + string.digits
ID_RANDOM_CHARS = 20
SECRET_CHARS = 30
IV_LEN = 12


@dataclass(frozen=True, slots=True)
class Credential:
    access_key_id: str
    secret: str = field(repr=False)
    enabled: bool = True
    policy: Policy = ALLOW_ALL


def _aad(access_key_id: str) -> bytes:
    return f"hsmkms:access-key:{access_key_id}".encode()


class AccessKeyService:
    def __init__(self, store: Store, hsm: HsmBackend, watch: StoreWatch, clock: Callable[[], float],
                 token_iv: bool = False):
        self.store = store
        self.hsm = hsm
        self.token_iv = token_iv  # [hsm] gcm_iv = "token": the token makes the IV (any length the store keeps)
        self.watch = watch
        self.clock = clock
        self._credentials: Cache[str, Credential] = Cache(watch)

    def ensure_service_key(self) -> None:
        if not self.hsm.has_key(SERVICE_KEY_ID):
            self.hsm.create_aes_key(SERVICE_KEY_ID, SERVICE_KEY_LABEL)
            log.info("created the HSM service key that seals access key secrets")

    def create(self, description: str = "", policy: Policy = ALLOW_ALL) -> tuple[str, str]:
        """A new enabled access key; the secret is returned here once and stored only sealed."""
        access_key_id = ID_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(ID_RANDOM_CHARS))
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS))
        if self.token_iv:
            iv, sealed = self.hsm.gcm_encrypt_token_iv(SERVICE_KEY_ID, secret.encode("ascii"), _aad(access_key_id))
        else:
            iv = self.hsm.random(IV_LEN)
            sealed = self.hsm.gcm_encrypt(SERVICE_KEY_ID, iv, secret.encode("ascii"), _aad(access_key_id))
        self.store.create_access_key(AccessKeyRecord(
            access_key_id, iv, sealed, "Enabled", description, int(self.clock()), policy.to_json()))
        self.watch.invalidate()
        return access_key_id, secret

    def set_enabled(self, access_key_id: str, enabled: bool) -> None:
        self._changed(self.store.set_access_key_state(access_key_id, "Enabled" if enabled else "Disabled"))

    def delete(self, access_key_id: str) -> None:
        self._changed(self.store.delete_access_key(access_key_id))

    def set_policy(self, access_key_id: str, document: str) -> Policy:
        """Validate (PolicyError on a bad document) and store a new policy for the access key."""
        policy = parse_policy(document)
        self._changed(self.store.set_access_key_policy(access_key_id, policy.to_json()))
        return policy

    def policy_of(self, access_key_id: str) -> Policy:
        record = self.store.get_access_key(access_key_id)
        if record is None:
            raise InvalidAccessKeyIdNotFound()
        return ALLOW_ALL if record.policy is None else load_stored_policy(record.policy)

    def _changed(self, found: bool) -> None:
        if not found:
            raise InvalidAccessKeyIdNotFound()
        self.watch.invalidate()

    def exists(self, access_key_id: str) -> bool:
        return self.store.get_access_key(access_key_id) is not None

    def credential(self, access_key_id: str) -> Credential:
        """The usable credential for a signature check: InvalidAccessKeyId.NotFound / Forbidden.AccessKey."""
        credential = self._credentials.get(access_key_id, lambda: self._unseal(access_key_id))
        if credential is None:
            raise InvalidAccessKeyIdNotFound()
        if not credential.enabled:
            raise ForbiddenAccessKey()
        return credential

    def _unseal(self, access_key_id: str) -> Credential | None:
        record = self.store.get_access_key(access_key_id) if len(access_key_id) <= 128 else None
        if record is None:
            return None
        secret = self.hsm.gcm_decrypt(SERVICE_KEY_ID, record.secret_iv, record.secret_sealed, _aad(access_key_id))
        policy = ALLOW_ALL if record.policy is None else load_stored_policy(record.policy)
        return Credential(access_key_id, secret.decode("ascii"), record.state == "Enabled", policy)

    def list(self) -> list[AccessKeyRecord]:
        return self.store.list_access_keys()
