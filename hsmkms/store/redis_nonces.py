"""Signature nonces in Redis, shared by every node: ``SET key 1 NX EX seconds`` is the whole claim.

A nonce's key is a 16-byte digest of (AccessKeyId, nonce) under KEY_PREFIX; Redis forgets it when the
request's window (and CLOCK_STEP_GRACE_S) has passed.  An unreachable or failing Redis is a StoreError
(answered 503): a request is never let through unchecked.  A connection Redis closed (a restart) is retried
once on a fresh one; a timeout is not retried, since the first SET may have been applied.  The password, if
Redis wants one, comes from REDISCLI_AUTH (never from the URL).
"""

from __future__ import annotations

import hashlib
import os
import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hsmkms.store.base import StoreError
from hsmkms.store.nonces import CLOCK_STEP_GRACE_S

KEY_PREFIX = b"hsmkms:nonce:"
TIMEOUT_S = 2.0  # a Redis that does not answer within this is unavailable (503)
PASSWORD_ENV = "REDISCLI_AUTH"


class RedisNonces:
    def __init__(self, url: str, key_prefix: bytes = KEY_PREFIX):
        self.url = url
        self.key_prefix = key_prefix
        self._client: redis.Redis | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _redis(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client = redis.Redis.from_url(
                        self.url, password=os.environ.get(PASSWORD_ENV) or None, socket_timeout=TIMEOUT_S,
                        socket_connect_timeout=TIMEOUT_S,
                        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
                    )
                    self._pid = os.getpid()
        return self._client

    def key(self, access_key_id: str, nonce: str) -> bytes:
        data = f"{len(access_key_id)}:{access_key_id}{nonce}".encode("utf-8", "surrogatepass")
        return self.key_prefix + hashlib.blake2b(data, digest_size=16).digest()

    def claim(self, access_key_id: str, nonce: str, now: float, expires: float) -> bool:
        seconds = max(int(expires) + CLOCK_STEP_GRACE_S - int(now), 1)
        try:
            return bool(self._redis().set(self.key(access_key_id, nonce), b"1", nx=True, ex=seconds))
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"nonce cache (Redis): {exc}") from exc

    def prepare(self, now: float) -> None:
        """Nothing to create; fails (StoreError) when Redis does not answer."""
        if not self.ping():
            raise StoreError("nonce cache (Redis) does not answer")

    def ping(self) -> bool:
        try:
            return bool(self._redis().ping())
        except redis.exceptions.RedisError:
            return False

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None
