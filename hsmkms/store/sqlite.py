"""The embedded metadata store: one SQLite file in WAL mode, shared by every worker process.

Each thread gets its own connection (sqlite3 connections are not shared across threads); a separate
watcher connection answers ``data_version`` so callers can drop caches when another process committed.
Writes are synchronous=FULL: a key acknowledged to a client is on disk.

Every committed write also bumps a counter in ``<database>-changes`` (8 bytes, mapped into memory by every
process): reading it costs a memory read, where ``PRAGMA data_version`` costs a read transaction, and the
hot path asks on every request.  ``data_version`` stays the slower backstop for writers that do not bump
the counter (an operator's sqlite3 shell, a crash between commit and bump).
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
from dataclasses import astuple, fields
from pathlib import Path

from hsmkms.store.base import (
    AccessKeyRecord,
    AliasRecord,
    AlreadyExists,
    ImportTokenRecord,
    KeyFilter,
    KeyMaterialRecord,
    KeyRecord,
    PendingObject,
    StoreError,
    TagRecord,
    VersionRecord,
)

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

_LIVE = "destroyed_at IS NULL"

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

_KEY_FIELDS = [f.name for f in fields(KeyRecord)]
_KEY_COLUMNS = ", ".join(_KEY_FIELDS)
_KEY_PLACEHOLDERS = ", ".join("?" for _ in fields(KeyRecord))
_KEY_BOOLEANS = [i for i, f in enumerate(fields(KeyRecord)) if f.type == "bool"]


def _key_filter_sql(where: KeyFilter) -> tuple[str, tuple]:
    """The WHERE clause (and its arguments) for live keys matching a ListKeys filter."""
    if where.match_nothing:
        return "0", ()
    clauses, args = [_LIVE], []

    def among(expression: str, values: frozenset[str] | None) -> None:
        if values is not None:
            clauses.append(f"{expression} IN ({', '.join('?' for _ in values)})")
            args.extend(sorted(values))

    among("key_id", where.key_ids)
    among("state", where.states)
    among("key_spec", where.key_specs)
    among("key_usage", where.key_usages)
    among("protection_level", where.protection_levels)
    among("creator", where.creators)
    for table, column, values in [("aliases", "alias_name", where.alias_names), ("tags", "tag_key", where.tag_keys),
                                  ("tags", "tag_value", where.tag_values)]:
        if values is not None:
            marks = ", ".join("?" for _ in values)
            clauses.append(f"EXISTS (SELECT 1 FROM {table} t WHERE t.key_id = keys.key_id AND t.{column} IN ({marks}))")
            args.extend(sorted(values))
    return " AND ".join(clauses), tuple(args)


def _key(row) -> KeyRecord:
    values = list(row)
    for i in _KEY_BOOLEANS:  # SQLite stores booleans as integers
        values[i] = bool(values[i])
    return KeyRecord(*values)


class EveryProcess:
    """With SQLite, on one machine, every worker runs the background jobs: each step is claimed by a
    conditional write, so the jobs are safe to run from several processes at once."""

    def held(self) -> bool:
        return True

    def close(self) -> None:
        pass


class SqliteStore:
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
                booleans = {"keys": set(_KEY_BOOLEANS), **_BOOLEAN_COLUMNS}
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

    # --- keys and versions ------------------------------------------------------------------------------

    def begin_object(self, pending: PendingObject) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO pending_objects VALUES (?, ?, ?, ?)", astuple(pending))

    def finish_object(self, object_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM pending_objects WHERE object_id = ?", (object_id,))

    def pending_objects(self) -> list[PendingObject]:
        return [PendingObject(*row) for row in self._read("SELECT * FROM pending_objects ORDER BY created_at")]

    def create_key(self, key: KeyRecord, version: VersionRecord, tags: list[TagRecord]) -> None:
        with self._transaction() as conn:
            conn.execute(f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({_KEY_PLACEHOLDERS})", astuple(key))
            conn.execute("INSERT INTO key_versions VALUES (?, ?, ?)", astuple(version))
            conn.executemany("INSERT INTO tags VALUES (?, ?, ?)", [astuple(t) for t in tags])
            conn.execute("DELETE FROM pending_objects WHERE object_id = ?", (version.version_id,))

    def add_version(self, version: VersionRecord, expected_last_rotation: int | None) -> bool:
        with self._transaction() as conn:
            updated = conn.execute(
                f"UPDATE keys SET primary_version_id = ?, last_rotation_at = ? WHERE key_id = ? AND {_LIVE}"
                " AND state = 'Enabled' AND last_rotation_at IS ?",
                (version.version_id, version.created_at, version.key_id, expected_last_rotation),
            ).rowcount
            if updated:
                conn.execute("INSERT INTO key_versions VALUES (?, ?, ?)", astuple(version))
                conn.execute("DELETE FROM pending_objects WHERE object_id = ?", (version.version_id,))
            return bool(updated)

    def update_key(self, key_id: str, changes: dict, expected_state: str) -> bool:
        names = [name for name in changes if name in _KEY_FIELDS and name not in ("key_id", "destroyed_at")]
        if len(names) != len(changes):
            raise ValueError(f"not updatable: {sorted(set(changes) - set(names))}")
        assignments = ", ".join(f"{name} = ?" for name in names)
        with self._transaction() as conn:
            return conn.execute(
                f"UPDATE keys SET {assignments} WHERE key_id = ? AND state = ? AND {_LIVE}",
                (*changes.values(), key_id, expected_state),
            ).rowcount == 1

    def destroy_key(self, key_id: str, now: int) -> list[str]:
        with self._transaction() as conn:
            marked = conn.execute(
                f"UPDATE keys SET destroyed_at = ? WHERE key_id = ? AND state = 'PendingDeletion'"
                f" AND delete_at <= ? AND {_LIVE}",
                (now, key_id, now),
            ).rowcount
            if not marked:
                return []
            versions = [row[0] for row in conn.execute(
                "SELECT version_id FROM key_versions WHERE key_id = ?", (key_id,))]
            conn.executemany("INSERT OR REPLACE INTO pending_objects VALUES (?, ?, 'destroy', ?)",
                             [(version_id, key_id, now) for version_id in versions])
            conn.execute("DELETE FROM aliases WHERE key_id = ?", (key_id,))
            conn.execute("DELETE FROM tags WHERE key_id = ?", (key_id,))
            return versions

    def get_key(self, key_id: str) -> KeyRecord | None:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ? AND {_LIVE}", (key_id,))
        return _key(rows[0]) if rows else None

    def get_version(self, version_id: str) -> VersionRecord | None:
        rows = self._read(
            f"SELECT v.version_id, v.key_id, v.created_at FROM key_versions v JOIN keys k USING (key_id)"
            f" WHERE v.version_id = ? AND k.{_LIVE}",
            (version_id,),
        )
        return VersionRecord(*rows[0]) if rows else None

    def list_keys(self, offset: int, limit: int, where: KeyFilter | None = None) -> tuple[list[KeyRecord], int]:
        condition, args = _key_filter_sql(where or KeyFilter())
        rows = self._read(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {condition} ORDER BY created_at, key_id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        total = self._read(f"SELECT COUNT(*) FROM keys WHERE {condition}", args)[0][0]
        return [_key(row) for row in rows], total

    def list_versions(self, key_id: str, offset: int, limit: int) -> tuple[list[VersionRecord], int]:
        rows = self._read(
            "SELECT version_id, key_id, created_at FROM key_versions WHERE key_id = ?"
            " ORDER BY created_at, rowid LIMIT ? OFFSET ?",
            (key_id, limit, offset),
        )
        total = self._read("SELECT COUNT(*) FROM key_versions WHERE key_id = ?", (key_id,))[0][0]
        return [VersionRecord(*row) for row in rows], total

    def live_keys_and_versions(self, limit: int) -> tuple[list[KeyRecord], list[VersionRecord]]:
        """Up to ``limit`` live keys and their versions, for warming a worker's caches."""
        keys = [_key(row) for row in self._read(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {_LIVE} ORDER BY created_at DESC LIMIT ?", (limit,))]
        versions = [VersionRecord(*row) for row in self._read(
            f"SELECT v.version_id, v.key_id, v.created_at FROM key_versions v JOIN keys k USING (key_id)"
            f" WHERE k.{_LIVE} ORDER BY v.created_at DESC LIMIT ?", (limit,))]
        return keys, versions

    def all_versions(self) -> dict[str, bool]:
        rows = self._read("SELECT v.version_id, k.destroyed_at IS NULL FROM key_versions v JOIN keys k USING (key_id)")
        return {version_id: bool(live) for version_id, live in rows}

    def keys_due_for_deletion(self, now: int) -> list[str]:
        rows = self._read(
            f"SELECT key_id FROM keys WHERE state = 'PendingDeletion' AND delete_at <= ? AND {_LIVE}", (now,))
        return [row[0] for row in rows]

    def keys_due_for_rotation(self, now: int) -> list[KeyRecord]:
        rows = self._read(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE state = 'Enabled' AND {_LIVE} AND rotation_interval IS NOT NULL"
            " AND last_rotation_at + rotation_interval <= ?",
            (now,),
        )
        return [_key(row) for row in rows]

    # --- key-material import -----------------------------------------------------------------------------

    def add_import_token(self, token: ImportTokenRecord) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO import_tokens VALUES (?, ?, ?, ?, ?, ?)", astuple(token))
            conn.execute("DELETE FROM pending_objects WHERE object_id = ?", (token.wrapping_id,))

    def get_import_token(self, token_id: str) -> ImportTokenRecord | None:
        rows = self._read("SELECT * FROM import_tokens WHERE token_id = ?", (token_id,))
        return ImportTokenRecord(*rows[0]) if rows else None

    def expired_import_tokens(self, now: int) -> list[ImportTokenRecord]:
        return [ImportTokenRecord(*row) for row in self._read(
            "SELECT * FROM import_tokens WHERE expires_at <= ? ORDER BY expires_at", (now,))]

    def import_tokens(self) -> list[ImportTokenRecord]:
        return [ImportTokenRecord(*row) for row in self._read("SELECT * FROM import_tokens ORDER BY created_at")]

    def delete_import_token(self, token_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM import_tokens WHERE token_id = ?", (token_id,))

    def get_key_material(self, key_id: str) -> KeyMaterialRecord | None:
        rows = self._read("SELECT key_id, check_value, present, expires_at, imported_at FROM key_materials"
                          " WHERE key_id = ?", (key_id,))
        if not rows:
            return None
        key_id, check_value, present, expires_at, imported_at = rows[0]
        return KeyMaterialRecord(key_id, bytes(check_value), bool(present), expires_at, imported_at)

    def record_key_material(self, material: KeyMaterialRecord, version_id: str, expected_state: str) -> bool:
        with self._transaction() as conn:
            updated = conn.execute(
                f"UPDATE keys SET state = CASE WHEN state = 'PendingImport' THEN 'Enabled' ELSE state END"
                f" WHERE key_id = ? AND state = ? AND {_LIVE}", (material.key_id, expected_state)).rowcount
            if not updated:
                return False
            conn.execute(
                "INSERT INTO key_materials VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET"
                " check_value = excluded.check_value, present = excluded.present,"
                " expires_at = excluded.expires_at, imported_at = excluded.imported_at",
                (material.key_id, material.check_value, material.present, material.expires_at,
                 material.imported_at))
            conn.execute("DELETE FROM pending_objects WHERE object_id = ?", (version_id,))
            return True

    def clear_key_material(self, key_id: str, expected_state: str, destroy: PendingObject) -> bool:
        with self._transaction() as conn:
            updated = conn.execute(
                f"UPDATE keys SET state = CASE WHEN state = 'PendingDeletion' THEN state ELSE 'PendingImport' END"
                f" WHERE key_id = ? AND state = ? AND {_LIVE}", (key_id, expected_state)).rowcount
            if updated:
                conn.execute("UPDATE key_materials SET present = FALSE, expires_at = NULL WHERE key_id = ?",
                             (key_id,))
                conn.execute("INSERT INTO pending_objects VALUES (?, ?, ?, ?)", astuple(destroy))
            return bool(updated)

    def expired_materials(self, now: int) -> list[str]:
        return [row[0] for row in self._read(
            f"SELECT m.key_id FROM key_materials m JOIN keys k USING (key_id) WHERE m.present"
            f" AND m.expires_at <= ? AND k.{_LIVE} ORDER BY m.expires_at", (now,))]

    def versions_without_material(self) -> set[str]:
        return {row[0] for row in self._read(
            f"SELECT k.primary_version_id FROM keys k LEFT JOIN key_materials m USING (key_id)"
            f" WHERE k.origin = 'EXTERNAL' AND k.{_LIVE} AND (m.present IS NULL OR NOT m.present)")}

    # --- tags --------------------------------------------------------------------------------------------

    def set_tags(self, tags: list[TagRecord]) -> None:
        with self._transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", [astuple(t) for t in tags])

    def remove_tags(self, key_id: str, tag_keys: list[str] | None) -> None:
        with self._transaction() as conn:
            if tag_keys is None:
                conn.execute("DELETE FROM tags WHERE key_id = ?", (key_id,))
            else:
                conn.executemany("DELETE FROM tags WHERE key_id = ? AND tag_key = ?",
                                 [(key_id, tag_key) for tag_key in tag_keys])

    def list_tags(self, key_ids: list[str] | None = None) -> list[TagRecord]:
        if key_ids is None:
            rows = self._read("SELECT key_id, tag_key, tag_value FROM tags ORDER BY key_id, tag_key")
        else:
            marks = ", ".join("?" for _ in key_ids)
            rows = self._read(
                f"SELECT key_id, tag_key, tag_value FROM tags WHERE key_id IN ({marks}) ORDER BY key_id, tag_key",
                tuple(key_ids),
            )
        return [TagRecord(*row) for row in rows]

    # --- aliases -----------------------------------------------------------------------------------------

    def create_alias(self, alias: AliasRecord) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO aliases VALUES (?, ?, ?)", astuple(alias))

    def update_alias(self, alias_name: str, key_id: str, expected_key_id: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("UPDATE aliases SET key_id = ? WHERE alias_name = ? AND key_id = ?",
                                (key_id, alias_name, expected_key_id)).rowcount > 0

    def get_alias(self, alias_name: str) -> AliasRecord | None:
        rows = self._read("SELECT alias_name, key_id, created_at FROM aliases WHERE alias_name = ?",
                          (alias_name,))
        return AliasRecord(*rows[0]) if rows else None

    def delete_alias(self, alias_name: str, expected_key_id: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM aliases WHERE alias_name = ? AND key_id = ?",
                                (alias_name, expected_key_id)).rowcount > 0

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
            conn.execute("INSERT INTO access_keys VALUES (?, ?, ?, ?, ?, ?, ?)", astuple(record))

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None:
        rows = self._read("SELECT * FROM access_keys WHERE access_key_id = ?", (access_key_id,))
        return AccessKeyRecord(*rows[0]) if rows else None

    def list_access_keys(self) -> list[AccessKeyRecord]:
        return [AccessKeyRecord(*row) for row in self._read("SELECT * FROM access_keys ORDER BY created_at")]

    def set_access_key_state(self, access_key_id: str, state: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("UPDATE access_keys SET state = ? WHERE access_key_id = ?",
                                (state, access_key_id)).rowcount > 0

    def delete_access_key(self, access_key_id: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,)).rowcount > 0

    def set_access_key_policy(self, access_key_id: str, policy: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("UPDATE access_keys SET policy = ? WHERE access_key_id = ?",
                                (policy, access_key_id)).rowcount > 0
