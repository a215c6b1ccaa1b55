"""The embedded metadata store: one SQLite file in WAL mode, shared by every worker process.

Each thread gets its own connection (sqlite3 connections are not shared across threads); a separate
watcher connection answers ``data_version`` so callers can drop caches when another process committed.
Writes are synchronous=FULL: a key acknowledged to a client is on disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, fields
from pathlib import Path

from hsmkms.store.base import (
    AccessKeyRecord,
    AliasRecord,
    AlreadyExists,
    KeyRecord,
    StoreError,
    VersionRecord,
)

BUSY_TIMEOUT_MS = 5000

# Append only: each entry moves the schema from version N to N+1 (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        key_spec TEXT NOT NULL,
        key_usage TEXT NOT NULL,
        origin TEXT NOT NULL,
        protection_level TEXT NOT NULL,
        description TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        primary_version_id TEXT NOT NULL,
        delete_at INTEGER,
        deletion_protection INTEGER NOT NULL DEFAULT 0,
        deletion_protection_description TEXT NOT NULL DEFAULT '',
        rotation_interval INTEGER,
        last_rotation_at INTEGER
    );
    CREATE TABLE key_versions (
        version_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        created_at INTEGER NOT NULL
    );
    CREATE INDEX key_versions_by_key ON key_versions(key_id, created_at);
    CREATE TABLE aliases (
        alias_name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        created_at INTEGER NOT NULL
    );
    CREATE INDEX aliases_by_key ON aliases(key_id);
    CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        secret_iv BLOB NOT NULL,
        secret_sealed BLOB NOT NULL,
        state TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    """,
]

_KEY_COLUMNS = ", ".join(f.name for f in fields(KeyRecord))
_KEY_PLACEHOLDERS = ", ".join("?" for _ in fields(KeyRecord))
_KEY_BOOLEANS = [i for i, f in enumerate(fields(KeyRecord)) if f.type == "bool"]


def _key(row) -> KeyRecord:
    values = list(row)
    for i in _KEY_BOOLEANS:  # SQLite stores booleans as integers
        values[i] = bool(values[i])
    return KeyRecord(*values)


class SqliteStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._watch_lock = threading.Lock()
        self._watcher: sqlite3.Connection | None = None
        self._watcher_pid: int | None = None

    # --- connections -------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        # One connection per thread and process (a connection must not cross a fork).
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._local.conn = self._connect()
            self._local.pid = os.getpid()
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"metadata store: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list:
        with self._errors():
            return self._conn.execute(sql, args).fetchall()

    def migrate(self) -> None:
        """Create or upgrade the schema; safe to run on every start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn
        with self._errors():
            conn.execute("PRAGMA journal_mode=WAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in filter(str.strip, script.split(";")):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={number}")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
        with self._watch_lock:
            if self._watcher is not None and self._watcher_pid == os.getpid():
                self._watcher.close()
            self._watcher = None

    def ping(self) -> bool:
        try:
            self._read("SELECT 1")
            return True
        except StoreError:
            return False

    def data_version(self) -> int:
        with self._watch_lock:
            if self._watcher is None or self._watcher_pid != os.getpid():
                self._watcher = self._connect()
                self._watcher_pid = os.getpid()
            with self._errors():
                return self._watcher.execute("PRAGMA data_version").fetchone()[0]

    # --- keys --------------------------------------------------------------------------------------------

    def create_key(self, key: KeyRecord, version: VersionRecord) -> None:
        with self._transaction() as conn:
            conn.execute(f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({_KEY_PLACEHOLDERS})", astuple(key))
            conn.execute("INSERT INTO key_versions VALUES (?, ?, ?)", astuple(version))

    def get_key(self, key_id: str) -> KeyRecord | None:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ?", (key_id,))
        return _key(rows[0]) if rows else None

    def get_version(self, version_id: str) -> VersionRecord | None:
        rows = self._read("SELECT version_id, key_id, created_at FROM key_versions WHERE version_id = ?",
                          (version_id,))
        return VersionRecord(*rows[0]) if rows else None

    def list_keys(self, offset: int, limit: int) -> tuple[list[KeyRecord], int]:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created_at, key_id LIMIT ? OFFSET ?",
                          (limit, offset))
        total = self._read("SELECT COUNT(*) FROM keys")[0][0]
        return [_key(row) for row in rows], total

    # --- aliases -----------------------------------------------------------------------------------------

    def create_alias(self, alias: AliasRecord) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO aliases VALUES (?, ?, ?)", astuple(alias))

    def get_alias(self, alias_name: str) -> AliasRecord | None:
        rows = self._read("SELECT alias_name, key_id, created_at FROM aliases WHERE alias_name = ?",
                          (alias_name,))
        return AliasRecord(*rows[0]) if rows else None

    def delete_alias(self, alias_name: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM aliases WHERE alias_name = ?", (alias_name,)).rowcount > 0

    def list_aliases(self, offset: int, limit: int, key_id: str | None = None) -> tuple[list[AliasRecord], int]:
        where, args = ("WHERE key_id = ?", (key_id,)) if key_id is not None else ("", ())
        rows = self._read(
            f"SELECT alias_name, key_id, created_at FROM aliases {where} ORDER BY alias_name LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        total = self._read(f"SELECT COUNT(*) FROM aliases {where}", args)[0][0]
        return [AliasRecord(*row) for row in rows], total

    # --- access keys -------------------------------------------------------------------------------------

    def create_access_key(self, record: AccessKeyRecord) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO access_keys VALUES (?, ?, ?, ?, ?, ?)", astuple(record))

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None:
        rows = self._read("SELECT * FROM access_keys WHERE access_key_id = ?", (access_key_id,))
        return AccessKeyRecord(*rows[0]) if rows else None

    def list_access_keys(self) -> list[AccessKeyRecord]:
        return [AccessKeyRecord(*row) for row in self._read("SELECT * FROM access_keys ORDER BY created_at")]
