"""Access keys (AccessKeyId + AccessKeySecret) that sign requests.

A secret is stored sealed by an AES-GCM service key that lives in the HSM (AAD: the AccessKeyId, so a
sealed secret cannot be moved to another id); the database alone reveals nothing.  A process unseals a
secret once and keeps it in memory; the cache is dropped when the store changes (see ``watch``).
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from hsmkms.errors import ForbiddenAccessKey, InvalidAccessKeyIdNotFound
from hsmkms.hsm.backend import HsmBackend
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


def _aad(access_key_id: str) -> bytes:
    return f"hsmkms:access-key:{access_key_id}".encode()


class AccessKeyService:
    def __init__(self, store: Store, hsm: HsmBackend, watch: StoreWatch, clock: Callable[[], float]):
        self.store = store
        self.hsm = hsm
        self.watch = watch
        self.clock = clock
        self._credentials: Cache[str, Credential] = Cache(watch)

    def ensure_service_key(self) -> None:
        if not self.hsm.has_key(SERVICE_KEY_ID):
            self.hsm.create_aes_key(SERVICE_KEY_ID, SERVICE_KEY_LABEL)
            log.info("created the HSM service key that seals access key secrets")

    def create(self, description: str = "") -> tuple[str, str]:
        """A new enabled access key; the secret is returned here once and stored only sealed."""
        access_key_id = ID_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(ID_RANDOM_CHARS))
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS))
        iv = self.hsm.random(IV_LEN)
        sealed = self.hsm.gcm_encrypt(SERVICE_KEY_ID, iv, secret.encode("ascii"), _aad(access_key_id))
        self.store.create_access_key(
            AccessKeyRecord(access_key_id, iv, sealed, "Enabled", description, int(self.clock()))
        )
        self.watch.invalidate()
        return access_key_id, secret

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
        return Credential(access_key_id, secret.decode("ascii"), record.state == "Enabled")

    def list(self) -> list[AccessKeyRecord]:
        return self.store.list_access_keys()
