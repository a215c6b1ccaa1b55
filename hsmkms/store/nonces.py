"""Signature nonces seen inside the clock window, shared by every worker process.

A nonce must be refused on every worker once any worker accepted it, and remembered for as long as a
request carrying it could still pass the clock check.  A small SQLite file does both and keeps the memory
of each process flat whatever the request count: the nonces live in the OS page cache, not in the workers.
(LMDB was measured as the alternative: no cheaper per claim unless written through a writable memory map,
where a full disk kills the process with SIGBUS, and every nonce page a worker touches counts in its
resident memory.)  Only a 16-byte digest of (AccessKeyId, nonce) is stored.  The file is disposable state:
synchronous=OFF (a process crash loses nothing in WAL mode; an OS crash may forget recent nonces, whose
timestamps then still bound any replay).

Two things keep the workers from waiting on each other for the write lock, which every claim takes:
- When another worker holds it, a claim retries every BUSY_RETRY_S.  SQLite's own busy handler sleeps a
  millisecond or more at its first retry, for a lock held some twenty microseconds; under load that left a
  sixth of the CPU idle.
- Pruning visits one of PRUNE_SLICES slices of the digest space at a time (the digests are uniform), so a
  pass deletes what expired in a bounded part of the table instead of scanning all of it under the lock.
  An expired nonce therefore lingers up to PRUNE_SLICES * PRUNE_INTERVAL_S longer, which costs only space.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

from hsmkms.store.base import StoreError

PRUNE_INTERVAL_S = 10.0
PRUNE_SLICES = 64
BUSY_TIMEOUT_S = 5.0
BUSY_RETRY_S = 0.00005


class NonceStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._next_prune = 0.0
        self._next_slice = 0

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # private from the first byte
            # timeout=0: no SQLite busy handler; _execute retries at a finer grain.
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            self._local.conn, self._local.pid = conn, os.getpid()
            self._execute("PRAGMA journal_mode=WAL")
            self._execute("PRAGMA synchronous=OFF")
            self._execute("CREATE TABLE IF NOT EXISTS nonces (digest BLOB PRIMARY KEY, expires INTEGER NOT NULL)"
                          " WITHOUT ROWID")
        return conn

    def _execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        """One autocommit statement, retried while another process holds the lock (up to BUSY_TIMEOUT_S)."""
        conn = self._local.conn
        deadline = None
        while True:
            try:
                return conn.execute(sql, args)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                now = time.monotonic()
                deadline = deadline or now + BUSY_TIMEOUT_S
                if now > deadline:
                    raise
                time.sleep(BUSY_RETRY_S)

    def claim(self, access_key_id: str, nonce: str, now: float, expires: float) -> bool:
        """Record the nonce until ``expires``; False when it is already recorded and not yet expired."""
        digest = hashlib.sha256(f"{access_key_id}\0{nonce}".encode("utf-8", "surrogatepass")).digest()[:16]
        try:
            self._conn()
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_INTERVAL_S
                self._prune_slice(int(now))
            cursor = self._execute(
                "INSERT INTO nonces VALUES (?, ?) ON CONFLICT(digest) DO UPDATE SET expires = excluded.expires"
                " WHERE nonces.expires < ?",
                (digest, int(expires) + 1, int(now)),
            )
            return cursor.rowcount == 1
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"nonce store {self.path}: {exc}") from exc

    def _prune_slice(self, now: int) -> None:
        """Delete the expired nonces whose digests fall in the next slice (by first byte)."""
        index, self._next_slice = self._next_slice, (self._next_slice + 1) % PRUNE_SLICES
        low = bytes([index * 256 // PRUNE_SLICES])
        if index == PRUNE_SLICES - 1:
            self._execute("DELETE FROM nonces WHERE digest >= ? AND expires < ?", (low, now))
        else:
            high = bytes([(index + 1) * 256 // PRUNE_SLICES])
            self._execute("DELETE FROM nonces WHERE digest >= ? AND digest < ? AND expires < ?", (low, high, now))

    def count(self) -> int:
        """Recorded nonces, expired or not (for tests and diagnostics)."""
        try:
            self._conn()
            return self._execute("SELECT count(*) FROM nonces").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"nonce store {self.path}: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
