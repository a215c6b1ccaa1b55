"""The data methods both metadata stores share: each statement written once, for SQLite and PostgreSQL.

The two databases take the same statements but for a few phrases, which ``Dialect`` names; ``SqlStore`` holds
every data method of ``base.Store`` against it.  What differs in substance stays in ``sqlite.py`` and
``postgres.py``: connections, transactions and their errors, the schema and its migrations, change tracking,
the job lock, backup, export and import.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from typing import Any

from hsmkms.store.base import (
    AccessKeyRecord,
    AliasRecord,
    ImportTokenRecord,
    KeyFilter,
    KeyMaterialRecord,
    KeyRecord,
    PendingObject,
    TagRecord,
    VersionRecord,
)

_LIVE = "destroyed_at IS NULL"
_KEY_FIELDS = [f.name for f in fields(KeyRecord)]
KEY_BOOLEANS = [i for i, f in enumerate(fields(KeyRecord)) if f.type == "bool"]
# Interned: the few names every record repeats (Enabled, Aliyun_AES_256, ...) and the ids the workers' caches are
# keyed by.  Records then share one copy of each: the per-request checks read a name already in cache, and a
# cache lookup by a record's field (a version's key id) matches the cached key by identity, without reading a
# second copy (README, Performance: Many keys).
KEY_INTERNED = [_KEY_FIELDS.index(name) for name in ("key_id", "state", "key_spec", "key_usage", "origin",
                                                     "protection_level", "primary_version_id")]
_KEY_COLUMNS = ", ".join(_KEY_FIELDS)
_KEY_PLACEHOLDERS = ", ".join("?" for _ in _KEY_FIELDS)
_VERSION_COLUMNS = "v.version_id, v.key_id, v.created_at"
_ACCESS_KEY_COLUMNS = ", ".join(f.name for f in fields(AccessKeyRecord))


@dataclass(frozen=True)
class Dialect:
    """What the two databases spell differently in the statements below (written with ``?`` parameters)."""

    placeholder: str  # how the driver marks a parameter
    null_safe_equal: str  # the comparison that is also true when both sides are NULL
    version_order: str  # ORDER BY for versions in creation order (several may be made within one second)
    array_parameters: bool  # a list of values is bound as one array parameter, not one parameter per value

    def sql(self, statement: str) -> str:
        """``statement`` with its ``?`` parameters in the driver's placeholder style."""
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def among(self, expression: str, values: list) -> tuple[str, list]:
        """The condition that ``expression`` is one of ``values`` (none: false), and its arguments."""
        if self.array_parameters:
            return f"{expression} = ANY(?)", [values]
        return f"{expression} IN ({', '.join('?' for _ in values)})", list(values)


def _key_filter_sql(where: KeyFilter, dialect: Dialect) -> tuple[str, tuple]:
    """The WHERE clause (and its arguments) for live keys matching a ListKeys filter."""
    if where.match_nothing:
        return "FALSE", ()
    clauses, args = [_LIVE], []

    def among(expression: str, values: frozenset[str] | None) -> None:
        if values is not None:
            condition, values_args = dialect.among(expression, sorted(values))
            clauses.append(condition)
            args.extend(values_args)

    among("key_id", where.key_ids)
    among("state", where.states)
    among("key_spec", where.key_specs)
    among("key_usage", where.key_usages)
    among("protection_level", where.protection_levels)
    among("creator", where.creators)
    for table, column, values in [("aliases", "alias_name", where.alias_names), ("tags", "tag_key", where.tag_keys),
                                  ("tags", "tag_value", where.tag_values)]:
        if values is not None:
            condition, values_args = dialect.among(f"t.{column}", sorted(values))
            clauses.append(f"EXISTS (SELECT 1 FROM {table} t WHERE t.key_id = keys.key_id AND {condition})")
            args.extend(values_args)
    return " AND ".join(clauses), tuple(args)


def _key(row: Sequence) -> KeyRecord:
    values = list(row)
    for i in KEY_BOOLEANS:  # SQLite stores booleans as integers
        values[i] = bool(values[i])
    for i in KEY_INTERNED:
        values[i] = sys.intern(values[i])
    return KeyRecord(*values)


def _version(row: Sequence) -> VersionRecord:
    version_id, key_id, created_at = row
    return VersionRecord(sys.intern(version_id), sys.intern(key_id), created_at)


class _Writer:
    """A connection inside a write transaction that takes the statements of this module."""

    def __init__(self, conn: Any, dialect: Dialect):
        self._conn = conn
        self._dialect = dialect

    def execute(self, statement: str, args: Sequence = ()) -> Any:
        """Run one statement; returns the driver's cursor (for ``rowcount`` or its rows)."""
        return self._conn.execute(self._dialect.sql(statement), args)

    def executemany(self, statement: str, rows: list[tuple]) -> None:
        self._conn.cursor().executemany(self._dialect.sql(statement), rows)


class SqlStore:
    """The data methods of ``base.Store``, written once for both databases.

    A subclass sets ``dialect`` and provides, in its driver's own placeholder style:

    - ``_transaction()``: a context yielding a connection in a write transaction, committed when the block
      ends and rolled back when it raises; a taken unique name raises ``AlreadyExists``, other database
      errors ``StoreError``;
    - ``_read(query, args)``: the rows of one query, its errors likewise.
    """

    dialect: Dialect

    @contextmanager
    def _write(self) -> Iterator[_Writer]:
        with self._transaction() as conn:
            yield _Writer(conn, self.dialect)

    def _select(self, query: str, args: Sequence = ()) -> list:
        return self._read(self.dialect.sql(query), args)

    # --- keys and versions ------------------------------------------------------------------------------

    def begin_object(self, pending: PendingObject) -> None:
        with self._write() as db:
            db.execute("INSERT INTO pending_objects VALUES (?, ?, ?, ?)", astuple(pending))

    def finish_object(self, object_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM pending_objects WHERE object_id = ?", (object_id,))

    def pending_objects(self) -> list[PendingObject]:
        return [PendingObject(*row) for row in self._select(
            "SELECT object_id, key_id, purpose, created_at FROM pending_objects ORDER BY created_at, object_id")]

    def create_key(self, key: KeyRecord, version: VersionRecord, tags: list[TagRecord]) -> None:
        with self._write() as db:
            db.execute(f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({_KEY_PLACEHOLDERS})", astuple(key))
            db.execute("INSERT INTO key_versions (version_id, key_id, created_at) VALUES (?, ?, ?)",
                       astuple(version))
            if tags:
                db.executemany("INSERT INTO tags VALUES (?, ?, ?)", [astuple(t) for t in tags])
            db.execute("DELETE FROM pending_objects WHERE object_id = ?", (version.version_id,))

    def add_version(self, version: VersionRecord, expected_last_rotation: int | None) -> bool:
        with self._write() as db:
            updated = db.execute(
                f"UPDATE keys SET primary_version_id = ?, last_rotation_at = ? WHERE key_id = ? AND {_LIVE}"
                f" AND state = 'Enabled' AND last_rotation_at {self.dialect.null_safe_equal} ?",
                (version.version_id, version.created_at, version.key_id, expected_last_rotation),
            ).rowcount
            if updated:
                db.execute("INSERT INTO key_versions (version_id, key_id, created_at) VALUES (?, ?, ?)",
                           astuple(version))
                db.execute("DELETE FROM pending_objects WHERE object_id = ?", (version.version_id,))
            return bool(updated)

    def update_key(self, key_id: str, changes: dict, expected_state: str) -> bool:
        names = [name for name in changes if name in _KEY_FIELDS and name not in ("key_id", "destroyed_at")]
        if len(names) != len(changes):
            raise ValueError(f"not updatable: {sorted(set(changes) - set(names))}")
        assignments = ", ".join(f"{name} = ?" for name in names)
        with self._write() as db:
            return db.execute(
                f"UPDATE keys SET {assignments} WHERE key_id = ? AND state = ? AND {_LIVE}",
                (*changes.values(), key_id, expected_state),
            ).rowcount == 1

    def destroy_key(self, key_id: str, now: int) -> list[str]:
        with self._write() as db:
            marked = db.execute(
                f"UPDATE keys SET destroyed_at = ? WHERE key_id = ? AND state = 'PendingDeletion'"
                f" AND delete_at <= ? AND {_LIVE}",
                (now, key_id, now),
            ).rowcount
            if not marked:
                return []
            versions = [row[0] for row in db.execute(
                f"SELECT version_id FROM key_versions WHERE key_id = ? ORDER BY {self.dialect.version_order}",
                (key_id,))]
            db.executemany(
                "INSERT INTO pending_objects VALUES (?, ?, 'destroy', ?) ON CONFLICT (object_id) DO UPDATE"
                " SET key_id = excluded.key_id, purpose = excluded.purpose, created_at = excluded.created_at",
                [(version_id, key_id, now) for version_id in versions])
            db.execute("DELETE FROM aliases WHERE key_id = ?", (key_id,))
            db.execute("DELETE FROM tags WHERE key_id = ?", (key_id,))
            return versions

    def get_key(self, key_id: str) -> KeyRecord | None:
        rows = self._select(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = ? AND {_LIVE}", (key_id,))
        return _key(rows[0]) if rows else None

    def get_version(self, version_id: str) -> VersionRecord | None:
        rows = self._select(
            f"SELECT {_VERSION_COLUMNS} FROM key_versions v JOIN keys k USING (key_id)"
            f" WHERE v.version_id = ? AND k.{_LIVE}",
            (version_id,),
        )
        return _version(rows[0]) if rows else None

    def list_keys(self, offset: int, limit: int, where: KeyFilter | None = None) -> tuple[list[KeyRecord], int]:
        condition, args = _key_filter_sql(where or KeyFilter(), self.dialect)
        rows = self._select(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {condition} ORDER BY created_at, key_id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        total = self._select(f"SELECT COUNT(*) FROM keys WHERE {condition}", args)[0][0]
        return [_key(row) for row in rows], total

    def list_versions(self, key_id: str, offset: int, limit: int) -> tuple[list[VersionRecord], int]:
        rows = self._select(
            "SELECT version_id, key_id, created_at FROM key_versions WHERE key_id = ?"
            f" ORDER BY {self.dialect.version_order} LIMIT ? OFFSET ?",
            (key_id, limit, offset),
        )
        total = self._select("SELECT COUNT(*) FROM key_versions WHERE key_id = ?", (key_id,))[0][0]
        return [_version(row) for row in rows], total

    def live_keys_and_versions(self, limit: int) -> tuple[list[KeyRecord], list[VersionRecord]]:
        """Up to ``limit`` live keys and their versions, for warming a worker's caches."""
        keys = [_key(row) for row in self._select(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {_LIVE} ORDER BY created_at DESC LIMIT ?", (limit,))]
        versions = [_version(row) for row in self._select(
            f"SELECT {_VERSION_COLUMNS} FROM key_versions v JOIN keys k USING (key_id)"
            f" WHERE k.{_LIVE} ORDER BY v.created_at DESC LIMIT ?", (limit,))]
        return keys, versions

    def all_versions(self) -> dict[str, bool]:
        rows = self._select(
            "SELECT v.version_id, k.destroyed_at IS NULL FROM key_versions v JOIN keys k USING (key_id)")
        return {version_id: bool(live) for version_id, live in rows}

    def keys_due_for_deletion(self, now: int) -> list[str]:
        rows = self._select(
            f"SELECT key_id FROM keys WHERE state = 'PendingDeletion' AND delete_at <= ? AND {_LIVE}", (now,))
        return [row[0] for row in rows]

    def keys_due_for_rotation(self, now: int) -> list[KeyRecord]:
        rows = self._select(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE state = 'Enabled' AND {_LIVE} AND rotation_interval IS NOT NULL"
            " AND last_rotation_at + rotation_interval <= ?",
            (now,),
        )
        return [_key(row) for row in rows]

    # --- key-material import -----------------------------------------------------------------------------

    def add_import_token(self, token: ImportTokenRecord) -> None:
        with self._write() as db:
            db.execute("INSERT INTO import_tokens VALUES (?, ?, ?, ?, ?, ?)", astuple(token))
            db.execute("DELETE FROM pending_objects WHERE object_id = ?", (token.wrapping_id,))

    def get_import_token(self, token_id: str) -> ImportTokenRecord | None:
        rows = self._select("SELECT * FROM import_tokens WHERE token_id = ?", (token_id,))
        return ImportTokenRecord(*rows[0]) if rows else None

    def expired_import_tokens(self, now: int) -> list[ImportTokenRecord]:
        return [ImportTokenRecord(*row) for row in self._select(
            "SELECT * FROM import_tokens WHERE expires_at <= ? ORDER BY expires_at", (now,))]

    def import_tokens(self) -> list[ImportTokenRecord]:
        return [ImportTokenRecord(*row) for row in self._select("SELECT * FROM import_tokens ORDER BY created_at")]

    def delete_import_token(self, token_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM import_tokens WHERE token_id = ?", (token_id,))

    def get_key_material(self, key_id: str) -> KeyMaterialRecord | None:
        rows = self._select("SELECT key_id, check_value, present, expires_at, imported_at FROM key_materials"
                            " WHERE key_id = ?", (key_id,))
        if not rows:
            return None
        key_id, check_value, present, expires_at, imported_at = rows[0]
        return KeyMaterialRecord(key_id, bytes(check_value), bool(present), expires_at, imported_at)

    def record_key_material(self, material: KeyMaterialRecord, version_id: str, expected_state: str) -> bool:
        with self._write() as db:
            updated = db.execute(
                f"UPDATE keys SET state = CASE WHEN state = 'PendingImport' THEN 'Enabled' ELSE state END"
                f" WHERE key_id = ? AND state = ? AND {_LIVE}", (material.key_id, expected_state)).rowcount
            if not updated:
                return False
            db.execute(
                "INSERT INTO key_materials VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET"
                " check_value = excluded.check_value, present = excluded.present,"
                " expires_at = excluded.expires_at, imported_at = excluded.imported_at",
                (material.key_id, material.check_value, material.present, material.expires_at,
                 material.imported_at))
            db.execute("DELETE FROM pending_objects WHERE object_id = ?", (version_id,))
            return True

    def clear_key_material(self, key_id: str, expected_state: str, destroy: PendingObject) -> bool:
        with self._write() as db:
            updated = db.execute(
                f"UPDATE keys SET state = CASE WHEN state = 'PendingDeletion' THEN state ELSE 'PendingImport' END"
                f" WHERE key_id = ? AND state = ? AND {_LIVE}", (key_id, expected_state)).rowcount
            if updated:
                db.execute("UPDATE key_materials SET present = FALSE, expires_at = NULL WHERE key_id = ?",
                           (key_id,))
                db.execute("INSERT INTO pending_objects VALUES (?, ?, ?, ?)", astuple(destroy))
            return bool(updated)

    def expired_materials(self, now: int) -> list[str]:
        return [row[0] for row in self._select(
            f"SELECT m.key_id FROM key_materials m JOIN keys k USING (key_id) WHERE m.present"
            f" AND m.expires_at <= ? AND k.{_LIVE} ORDER BY m.expires_at", (now,))]

    def versions_without_material(self) -> set[str]:
        return {row[0] for row in self._select(
            f"SELECT k.primary_version_id FROM keys k LEFT JOIN key_materials m USING (key_id)"
            f" WHERE k.origin = 'EXTERNAL' AND k.{_LIVE} AND (m.present IS NULL OR NOT m.present)")}

    # --- tags --------------------------------------------------------------------------------------------

    def set_tags(self, tags: list[TagRecord]) -> None:
        with self._write() as db:
            db.executemany(
                "INSERT INTO tags VALUES (?, ?, ?) ON CONFLICT (key_id, tag_key) DO UPDATE"
                " SET tag_value = excluded.tag_value", [astuple(t) for t in tags])

    def remove_tags(self, key_id: str, tag_keys: list[str] | None) -> None:
        with self._write() as db:
            if tag_keys is None:
                db.execute("DELETE FROM tags WHERE key_id = ?", (key_id,))
            else:
                condition, args = self.dialect.among("tag_key", list(tag_keys))
                db.execute(f"DELETE FROM tags WHERE key_id = ? AND {condition}", (key_id, *args))

    def list_tags(self, key_ids: list[str] | None = None) -> list[TagRecord]:
        if key_ids is None:
            rows = self._select("SELECT key_id, tag_key, tag_value FROM tags ORDER BY key_id, tag_key")
        else:
            condition, args = self.dialect.among("key_id", list(key_ids))
            rows = self._select(
                f"SELECT key_id, tag_key, tag_value FROM tags WHERE {condition} ORDER BY key_id, tag_key", args)
        return [TagRecord(*row) for row in rows]

    # --- aliases -----------------------------------------------------------------------------------------

    def create_alias(self, alias: AliasRecord) -> None:
        with self._write() as db:
            db.execute("INSERT INTO aliases VALUES (?, ?, ?)", astuple(alias))

    def update_alias(self, alias_name: str, key_id: str, expected_key_id: str) -> bool:
        with self._write() as db:
            return db.execute("UPDATE aliases SET key_id = ? WHERE alias_name = ? AND key_id = ?",
                              (key_id, alias_name, expected_key_id)).rowcount > 0

    def get_alias(self, alias_name: str) -> AliasRecord | None:
        rows = self._select("SELECT alias_name, key_id, created_at FROM aliases WHERE alias_name = ?", (alias_name,))
        return AliasRecord(*rows[0]) if rows else None

    def delete_alias(self, alias_name: str, expected_key_id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM aliases WHERE alias_name = ? AND key_id = ?",
                              (alias_name, expected_key_id)).rowcount > 0

    def list_aliases(self, offset: int, limit: int, key_id: str | None = None) -> tuple[list[AliasRecord], int]:
        where, args = ("WHERE key_id = ?", (key_id,)) if key_id is not None else ("", ())
        rows = self._select(
            f"SELECT alias_name, key_id, created_at FROM aliases {where} ORDER BY alias_name LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        total = self._select(f"SELECT COUNT(*) FROM aliases {where}", args)[0][0]
        return [AliasRecord(*row) for row in rows], total

    # --- access keys -------------------------------------------------------------------------------------

    def create_access_key(self, record: AccessKeyRecord) -> None:
        with self._write() as db:
            db.execute(f"INSERT INTO access_keys ({_ACCESS_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       astuple(record))

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None:
        rows = self._select(f"SELECT {_ACCESS_KEY_COLUMNS} FROM access_keys WHERE access_key_id = ?",
                            (access_key_id,))
        return AccessKeyRecord(*rows[0]) if rows else None

    def list_access_keys(self) -> list[AccessKeyRecord]:
        return [AccessKeyRecord(*row) for row in self._select(
            f"SELECT {_ACCESS_KEY_COLUMNS} FROM access_keys ORDER BY created_at, access_key_id")]

    def set_access_key_state(self, access_key_id: str, state: str) -> bool:
        with self._write() as db:
            return db.execute("UPDATE access_keys SET state = ? WHERE access_key_id = ?",
                              (state, access_key_id)).rowcount > 0

    def delete_access_key(self, access_key_id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,)).rowcount > 0

    def set_access_key_policy(self, access_key_id: str, policy: str) -> bool:
        with self._write() as db:
            return db.execute("UPDATE access_keys SET policy = ? WHERE access_key_id = ?",
                              (policy, access_key_id)).rowcount > 0
