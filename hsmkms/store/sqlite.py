"""The embedded metadata store: one SQLite file in WAL mode, shared by every worker process.

Each thread gets its own connection (sqlite3 connections are not shared across threads); a separate
watcher connection answers ``data_version`` so callers can drop caches when another process committed.
Writes are synchronous=FULL: a key acknowledged to a client is on disk.

Every committed write also bumps a counter in ``<database>-changes`` (8 bytes, mapped into memory by every
process): reading it costs a memory read, where ``PRAGMA data_version`` costs a read transaction, and the
hot path asks on every request.  ``data_version`` stays the slower backstop for writers that do not bump
the counter (an operator's sqlite3 shell, a crash between commit and bump).

The data methods' statements are shared with PostgreSQL (``sql.SqlStore``); this module holds what is
SQLite's own: connections, transactions, the schema, the change counter, backup and export.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from hsmkms.store.base import (
    AccessKeyRecord,
    AlreadyExists,
    ImportTokenRecord,
    KeyMaterialRecord,
    KeyRecord,
    StoreError,
)
from hsmkms.store.sql import KEY_BOOLEANS, Dialect, SqlStore

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5000
_COUNTER_BYTES = 8

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
    # 2: key lifecycle -- destruction, tags, and the pending-object journal for crash consistency
    """
    ALTER TABLE keys ADD COLUMN destroyed_at INTEGER;
    CREATE INDEX keys_by_state ON keys(state, destroyed_at);
    CREATE TABLE tags (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        tag_key TEXT NOT NULL,
        tag_value TEXT NOT NULL,
        PRIMARY KEY (key_id, tag_key)
    );
    CREATE INDEX tags_by_value ON tags(tag_key, tag_value);
    CREATE TABLE pending_objects (
        object_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        purpose TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    """,
    # 3: authorization -- a policy document per access key
    """
    ALTER TABLE access_keys ADD COLUMN policy TEXT;
    """,
    # 4: key-material import -- import tokens and the check values of imported material
    """
    CREATE TABLE import_tokens (
        token_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        wrapping_id TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX import_tokens_by_expiry ON import_tokens(expires_at);
    CREATE TABLE key_materials (
        key_id TEXT PRIMARY KEY REFERENCES keys(key_id),
        check_value BLOB NOT NULL,
        present BOOLEAN NOT NULL,
        expires_at BIGINT,
        imported_at BIGINT NOT NULL
    );
    """,
]

# What ``export_rows`` copies: table -> (columns, order).  Parents before children.
EXPORTED_TABLES: dict[str, tuple[list[str], str]] = {
    "keys": ([f.name for f in fields(KeyRecord)], "ORDER BY created_at, key_id"),
    "key_versions": (["version_id", "key_id", "created_at"], "ORDER BY created_at, rowid"),
    "aliases": (["alias_name", "key_id", "created_at"], "ORDER BY alias_name"),
    "tags": (["key_id", "tag_key", "tag_value"], "ORDER BY key_id, tag_key"),
    "pending_objects": (["object_id", "key_id", "purpose", "created_at"], "ORDER BY created_at, object_id"),
    "access_keys": ([f.name for f in fields(AccessKeyRecord)], "ORDER BY created_at, access_key_id"),
    "import_tokens": ([f.name for f in fields(ImportTokenRecord)], "ORDER BY created_at, token_id"),
    "key_materials": ([f.name for f in fields(KeyMaterialRecord)], "ORDER BY imported_at, key_id"),
}
# Columns SQLite keeps as 0/1 that PostgreSQL keeps as booleans: table -> column positions.
_BOOLEAN_COLUMNS = {"key_materials": {2}}


class EveryProcess:
    """With SQLite, on one machine, every worker runs the background jobs: each step is claimed by a
    conditional write, so the jobs are safe to run from several processes at once."""

    def held(self) -> bool:
        return True

    def close(self) -> None:
        pass


class SqliteStore(SqlStore):
    dialect = Dialect(placeholder="?", null_safe_equal="IS", version_order="created_at, rowid",
                      array_parameters=False)

    def __init__(self, path: Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS):
        self.path = Path(path)
        # How long a write waits for another process's write lock before the request fails with a 503.
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._watch_lock = threading.Lock()
        self._watcher: sqlite3.Connection | None = None
        self._watcher_pid: int | None = None
        self.changes_path = self.path.with_name(self.path.name + "-changes")
        self._changes: mmap.mmap | None = None
        self._changes_pid: int | None = None

    # --- connections -------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
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
        self._bump_changes()

    def _open_changes(self) -> int:
        """The counter file, created (8 zero bytes, mode 0600) when missing; returns an open descriptor."""
        fd = os.open(self.changes_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _COUNTER_BYTES:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size < _COUNTER_BYTES:
                    os.pwrite(fd, bytes(_COUNTER_BYTES), 0)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _bump_changes(self) -> None:
        try:
            fd = self._open_changes()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # writers in other processes bump the same counter
                count = int.from_bytes(os.pread(fd, _COUNTER_BYTES, 0), "little")
                os.pwrite(fd, ((count + 1) % 2**64).to_bytes(_COUNTER_BYTES, "little"), 0)
            finally:
                os.close(fd)  # also releases the lock
        except OSError as exc:  # caches then notice the commit through data_version, a moment later
            log.warning("cannot bump the change counter %s: %s", self.changes_path, exc)

    def change_counter(self) -> bytes:
        """The change counter's current bytes: different after any write committed through this class."""
        if self._changes is None or self._changes_pid != os.getpid():
            try:
                fd = self._open_changes()
            except OSError as exc:
                raise StoreError(f"change counter {self.changes_path}: {exc}") from exc
            try:
                self._changes = mmap.mmap(fd, _COUNTER_BYTES, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            self._changes_pid = os.getpid()
        return self._changes[:_COUNTER_BYTES]

    def _read(self, sql: str, args: tuple = ()) -> list:
        with self._errors():
            return self._conn.execute(sql, args).fetchall()

    def migrate(self) -> None:
        """Create or upgrade the schema; safe to run on every start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn
        with self._errors():
            conn.execute("PRAGMA journal_mode=WAL")
            # One write transaction: processes starting at once wait for each other, and the later ones find
            # the schema (read inside the transaction) already up to date.
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in filter(str.strip, script.split(";")):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={number}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        os.chmod(self.path, 0o600)
        self._bump_changes()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
        with self._watch_lock:
            if self._watcher is not None and self._watcher_pid == os.getpid():
                self._watcher.close()
            self._watcher = None
            if self._changes is not None:
                self._changes.close()
            self._changes = None

    def backup(self, destination: Path) -> None:
        """A consistent copy of the database while it is in use (SQLite's online backup, one snapshot)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        with self._errors():
            target = sqlite3.connect(destination)
            try:
                self._conn.backup(target)
            finally:
                target.close()
        os.chmod(destination, 0o600)

    def export_rows(self) -> dict[str, list[tuple]]:
        """Every row of every table, in one read transaction (for ``hsmkms migrate-store``): versions in the
        order they were made, booleans as booleans."""
        with self._errors():
            conn = self._conn
            conn.execute("BEGIN")
            try:
                booleans = {"keys": set(KEY_BOOLEANS), **_BOOLEAN_COLUMNS}
                return {table: [tuple(bool(v) if i in booleans.get(table, ()) else v
                                      for i, v in enumerate(row))
                                for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table} {order}")]
                        for table, (columns, order) in EXPORTED_TABLES.items()}
            finally:
                conn.execute("ROLLBACK")

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check")[0][0] == "ok"

    def ping(self) -> bool:
        try:
            self._read("SELECT 1")
            return True
        except StoreError:
            return False

    def job_lock(self) -> EveryProcess:
        return EveryProcess()

    def data_version(self) -> int:
        with self._watch_lock:
            if self._watcher is None or self._watcher_pid != os.getpid():
                self._watcher = self._connect()
                self._watcher_pid = os.getpid()
            with self._errors():
                return self._watcher.execute("PRAGMA data_version").fetchone()[0]
