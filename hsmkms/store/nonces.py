"""Signature nonces seen inside the clock window, shared by every worker process.

A nonce must be refused on every worker once any worker accepted it, and remembered for as long as a
request carrying it could still pass the clock check.  A small SQLite file does both and keeps the memory
of each process flat whatever the request count: the nonces live in the OS page cache, not in the workers.
(LMDB was measured as the alternative: no cheaper per claim unless written through a writable memory map,
where a full disk kills the process with SIGBUS, and every nonce page a worker touches counts in its
resident memory.)  Only a 16-byte digest of (AccessKeyId, nonce) is stored.  The file is disposable state:
synchronous=OFF (a process crash loses nothing in WAL mode; an OS crash may forget recent nonces, whose
timestamps then still bound any replay).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

from hsmkms.store.base import StoreError

PRUNE_INTERVAL_S = 10.0
BUSY_TIMEOUT_MS = 5000


class NonceStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._next_prune = 0.0

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # private from the first byte
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS nonces (digest BLOB PRIMARY KEY, expires INTEGER NOT NULL)"
                " WITHOUT ROWID"
            )
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def claim(self, access_key_id: str, nonce: str, now: float, expires: float) -> bool:
        """Record the nonce until ``expires``; False when it is already recorded and not yet expired."""
        digest = hashlib.sha256(f"{access_key_id}\0{nonce}".encode("utf-8", "surrogatepass")).digest()[:16]
        try:
            conn = self._conn()
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_INTERVAL_S
                conn.execute("DELETE FROM nonces WHERE expires < ?", (int(now),))
            cursor = conn.execute(
                "INSERT INTO nonces VALUES (?, ?) ON CONFLICT(digest) DO UPDATE SET expires = excluded.expires"
                " WHERE nonces.expires < ?",
                (digest, int(expires) + 1, int(now)),
            )
            return cursor.rowcount == 1
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"nonce store {self.path}: {exc}") from exc

    def count(self) -> int:
        """Recorded nonces, expired or not (for tests and diagnostics)."""
        try:
            return self._conn().execute("SELECT count(*) FROM nonces").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"nonce store {self.path}: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
