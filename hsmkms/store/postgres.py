"""The metadata store for several nodes: PostgreSQL (psycopg 3), chosen by ``[store] url``.

Every server worker keeps a small pool of connections (``[store] pool_size``), made after the fork.  The
schema lives in the first schema of the connection's ``search_path`` (``public`` unless the URL's
``options`` say otherwise); lock keys and the notification channel are derived from that schema's name, so
two deployments in two schemas of one database do not see each other.

- **Migrations** are numbered scripts applied in one transaction under an advisory lock: nodes starting at
  once wait for each other, and the second finds nothing left to do.
- **Changes** (what lets every node drop its caches): a trigger on every cached table bumps the one row of
  ``changes`` and sends a notification on the store's channel, in the writing transaction (so a change made
  by hand with psql counts too).  A thread in each process listens; ``change_counter()`` is a memory read of
  what it heard, and while it is not listening (starting, or reconnecting after the database went away) each
  call returns a new value, so that nothing is served from a cache that could have missed a change.
  ``data_version()`` reads the row itself: the watch asks it at most once a second, which bounds staleness
  to 1 s even if a notification were lost.
- **Background jobs** run where the session advisory lock ``jobs`` is held (``PostgresJobLock``).
- **Signature nonces** may live here too (``PostgresNonces``: an UNLOGGED table).

Reads and writes fail with StoreError (answered 503) when no connection is free within ``busy_timeout_ms`` or
a statement runs longer; a pooled connection the server closed is replaced before it is used.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, fields

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

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
from hsmkms.store.nonces import CLOCK_STEP_GRACE_S

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 4
LISTEN_POLL_S = 1.0  # how often the listening thread looks up from its connection (to stop, or to notice)
RECONNECT_S = 0.5  # pause between attempts to listen again after the connection was lost
# The pool retries a lost connection with growing pauses (1, 2, 4 ... s) for this long, then lets the next
# request start afresh: a node answers again within about this long after the database is back.
RECONNECT_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 1.0  # /readyz waits no longer than this for a connection
# Connection defaults a URL may override: give up connecting after 5 s, and notice a peer gone from the
# network (keepalives) instead of waiting for TCP's retransmissions, which take about 15 minutes.
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "application_name": "hsmkms",
}
# The server side of the job lock's connection: it must notice a node gone from the network within about
# 10 + 3 x 5 s, so that another node takes the lock over.
JOB_LOCK_KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}

# Append only: entry N moves the schema from version N to N+1 (recorded in schema_migrations).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE keys (
        key_id TEXT COLLATE "C" PRIMARY KEY,
        state TEXT NOT NULL,
        key_spec TEXT NOT NULL,
        key_usage TEXT NOT NULL,
        origin TEXT NOT NULL,
        protection_level TEXT NOT NULL,
        description TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        primary_version_id TEXT NOT NULL,
        delete_at BIGINT,
        deletion_protection BOOLEAN NOT NULL DEFAULT FALSE,
        deletion_protection_description TEXT NOT NULL DEFAULT '',
        rotation_interval BIGINT,
        last_rotation_at BIGINT,
        destroyed_at BIGINT
    );
    CREATE INDEX keys_by_state ON keys (state, destroyed_at);
    CREATE INDEX keys_by_creation ON keys (created_at, key_id);
    CREATE TABLE key_versions (
        version_id TEXT COLLATE "C" PRIMARY KEY,
        key_id TEXT COLLATE "C" NOT NULL REFERENCES keys (key_id),
        created_at BIGINT NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY  -- order of creation within one second
    );
    CREATE INDEX key_versions_by_key ON key_versions (key_id, created_at, seq);
    CREATE TABLE aliases (
        alias_name TEXT COLLATE "C" PRIMARY KEY,
        key_id TEXT COLLATE "C" NOT NULL REFERENCES keys (key_id),
        created_at BIGINT NOT NULL
    );
    CREATE INDEX aliases_by_key ON aliases (key_id);
    CREATE TABLE tags (
        key_id TEXT COLLATE "C" NOT NULL REFERENCES keys (key_id),
        tag_key TEXT COLLATE "C" NOT NULL,
        tag_value TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (key_id, tag_key)
    );
    CREATE INDEX tags_by_value ON tags (tag_key, tag_value);
    CREATE TABLE pending_objects (
        object_id TEXT COLLATE "C" PRIMARY KEY,
        key_id TEXT NOT NULL,
        purpose TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE access_keys (
        access_key_id TEXT COLLATE "C" PRIMARY KEY,
        secret_iv BYTEA NOT NULL,
        secret_sealed BYTEA NOT NULL,
        state TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        policy TEXT
    );
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        counter BIGINT NOT NULL
    );
    INSERT INTO changes VALUES (1, 0);
    -- Every statement that writes what the nodes cache (through hsmkms or by hand) bumps the counter and
    -- notifies the listeners; notifications go out at commit, one per transaction.
    CREATE FUNCTION hsmkms_changed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        UPDATE changes SET counter = counter + 1 WHERE id = 1;
        PERFORM pg_notify('hsmkms_changes_' || left(md5(TG_TABLE_SCHEMA), 16), '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON keys
        FOR EACH STATEMENT EXECUTE FUNCTION hsmkms_changed();
    CREATE TRIGGER key_versions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON key_versions
        FOR EACH STATEMENT EXECUTE FUNCTION hsmkms_changed();
    CREATE TRIGGER aliases_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON aliases
        FOR EACH STATEMENT EXECUTE FUNCTION hsmkms_changed();
    CREATE TRIGGER tags_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tags
        FOR EACH STATEMENT EXECUTE FUNCTION hsmkms_changed();
    CREATE TRIGGER access_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON access_keys
        FOR EACH STATEMENT EXECUTE FUNCTION hsmkms_changed();
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
        check_value BYTEA NOT NULL,
        present BOOLEAN NOT NULL,
        expires_at BIGINT,
        imported_at BIGINT NOT NULL
    );
    """,
]

_LIVE = "destroyed_at IS NULL"
_KEY_FIELDS = [f.name for f in fields(KeyRecord)]
_KEY_COLUMNS = ", ".join(_KEY_FIELDS)
_KEY_PLACEHOLDERS = ", ".join("%s" for _ in _KEY_FIELDS)
_VERSION_COLUMNS = "v.version_id, v.key_id, v.created_at"
_ACCESS_KEY_COLUMNS = ", ".join(f.name for f in fields(AccessKeyRecord))
# Connections (and their pools) inherited across a fork: kept referenced so that the child never finalises
# them, which would close the parent's sessions on the server.
_inherited: list = []


def scope_hash(scope: str, purpose: str) -> int:
    """A signed 64-bit number naming ``purpose`` in one schema: an advisory lock key."""
    digest = hashlib.blake2b(f"hsmkms:{scope}:{purpose}".encode(), digest_size=8).digest()
    return struct.unpack("<q", digest)[0]


def connection_kwargs(url: str) -> dict:
    """Connection parameters: the URL's, then CONNECTION_DEFAULTS for those it leaves out; autocommit."""
    given = conninfo_to_dict(url)
    return {name: value for name, value in CONNECTION_DEFAULTS.items() if name not in given} | {"autocommit": True}


def _key_filter_sql(where: KeyFilter) -> tuple[str, list]:
    """The WHERE clause (and its arguments) for live keys matching a ListKeys filter."""
    if where.match_nothing:
        return "FALSE", []
    clauses, args = [_LIVE], []

    def among(expression: str, values: frozenset[str] | None) -> None:
        if values is not None:
            clauses.append(f"{expression} = ANY(%s)")
            args.append(sorted(values))

    among("key_id", where.key_ids)
    among("state", where.states)
    among("key_spec", where.key_specs)
    among("key_usage", where.key_usages)
    among("protection_level", where.protection_levels)
    among("creator", where.creators)
    for table, column, values in [("aliases", "alias_name", where.alias_names), ("tags", "tag_key", where.tag_keys),
                                  ("tags", "tag_value", where.tag_values)]:
        if values is not None:
            clauses.append(f"EXISTS (SELECT 1 FROM {table} t WHERE t.key_id = keys.key_id AND t.{column} = ANY(%s))")
            args.append(sorted(values))
    return " AND ".join(clauses), args


class _Connections:
    """The per-process pool of one database, made at first use in each process (never across a fork)."""

    def __init__(self, url: str, pool_size: int, busy_timeout_ms: int):
        self.url = url
        self.pool_size = pool_size
        self.timeout_s = busy_timeout_ms / 1000
        self._statement_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pid = 0
        self.scope = ""  # the schema the store lives in

    def connect(self) -> psycopg.Connection:
        """A connection of its own (not from the pool), for listening or holding a lock."""
        with errors():
            return psycopg.connect(self.url, **connection_kwargs(self.url))

    def _configure(self, conn: psycopg.Connection) -> None:
        # A statement that waits longer than a request may (for a lock, a slow disk) fails: 503, not a hang.
        conn.execute(f"SET statement_timeout = {int(self._statement_timeout_ms)}")

    def pool(self) -> psycopg_pool.ConnectionPool:
        if self._pool is not None and self._pid == os.getpid():
            return self._pool
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                if self._pool is not None:
                    _inherited.append(self._pool)
                with errors():
                    with psycopg.connect(self.url, **connection_kwargs(self.url)) as conn:
                        scope = conn.execute("SELECT current_schema()").fetchone()[0]
                if scope is None:
                    raise StoreError("metadata store: the schema named by the URL's search_path does not exist")
                self.scope = scope
                self._pool = psycopg_pool.ConnectionPool(
                    self.url, kwargs=connection_kwargs(self.url), min_size=1, max_size=self.pool_size,
                    timeout=self.timeout_s, configure=self._configure, name="hsmkms", open=True,
                    reconnect_timeout=RECONNECT_TIMEOUT_S,
                )
                self._pid = os.getpid()
        return self._pool

    def schema(self) -> str:
        """The schema the store lives in (learnt at the first connection)."""
        self.pool()
        return self.scope

    def ping(self) -> bool:
        """The database answers within PING_TIMEOUT_S (for /readyz)."""
        try:
            with self.connection(PING_TIMEOUT_S) as conn:
                conn.execute("SELECT 1")
            return True
        except StoreError:
            return False

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A connection from the pool (waiting at most ``timeout``, default busy_timeout_ms); returned after."""
        with errors():
            pool = self.pool()
            conn = self._live_connection(pool, timeout)
            try:
                yield conn
            finally:
                pool.putconn(conn)

    def _live_connection(self, pool: psycopg_pool.ConnectionPool, timeout: float | None) -> psycopg.Connection:
        """A pooled connection the server has not closed.  An idle connection has nothing to read: anything
        there is the server saying goodbye (it restarted, or an administrator ended the session), and such a
        connection is closed and replaced rather than failing a request."""
        while True:
            conn = pool.getconn(timeout)
            if not select.select([conn.fileno()], [], [], 0)[0]:
                return conn
            conn.close()
            pool.putconn(conn)  # the pool drops it and makes another

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None


@contextmanager
def errors() -> Iterator[None]:
    """psycopg's errors as the store's: a taken name is AlreadyExists, anything else StoreError (503)."""
    try:
        yield
    except psycopg.errors.IntegrityError as exc:
        raise AlreadyExists(str(exc).strip()) from exc
    except psycopg.Error as exc:
        raise StoreError(f"metadata store: {str(exc).strip() or type(exc).__name__}") from exc


class _Listener:
    """A thread that counts the notifications on one channel, on a connection of its own."""

    def __init__(self, connections: _Connections, channel: str):
        self._connections = connections
        self._channel = channel
        self.count = 0  # bumped by each notification, and each time listening (re)starts
        self.listening = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hsmkms-store-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connections.connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self.count += 1  # whatever changed while nobody listened
                    self.listening = True
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_POLL_S):
                            self.count += 1
            except (psycopg.Error, StoreError) as exc:
                if self.listening:
                    log.warning("stopped listening for metadata changes (%s); caches are bypassed meanwhile",
                                str(exc).strip() or type(exc).__name__)
            self.listening = False
            self.count += 1
            self._stop.wait(RECONNECT_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(LISTEN_POLL_S * 3)


class PostgresStore:
    def __init__(self, url: str, busy_timeout_ms: int = 5000, pool_size: int = DEFAULT_POOL_SIZE):
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms
        self._db = _Connections(url, pool_size, busy_timeout_ms)
        self._listener: _Listener | None = None
        self._listener_pid = 0
        self._unconfirmed = itertools.count()

    # --- connections -------------------------------------------------------------------------------------

    @property
    def channel(self) -> str:
        """The notification channel of this store's schema (as the trigger function names it)."""
        return "hsmkms_changes_" + hashlib.md5(self._db.schema().encode(), usedforsecurity=False).hexdigest()[:16]

    def lock_key(self, purpose: str) -> int:
        return scope_hash(self._db.schema(), purpose)

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """A write (its triggers bump the change counter and notify, in the same transaction)."""
        with self._db.connection() as conn:
            with conn.transaction():
                yield conn

    def _read(self, query: str, args: tuple | list = ()) -> list:
        with self._db.connection() as conn:
            return conn.execute(query, args).fetchall()

    def migrate(self) -> None:
        with self._db.connection() as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key("migrate"),))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations"
                             " (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
                version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
                if version > len(MIGRATIONS):
                    raise StoreError(f"metadata store: the schema is at version {version}, newer than this "
                                     f"hsmkms knows ({len(MIGRATIONS)}); upgrade hsmkms")
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    conn.execute(script)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
                    log.info("metadata store: schema migrated to version %d", number)

    def import_rows(self, tables: dict[str, list[tuple]], columns: dict[str, list[str]]) -> None:
        """Insert exported rows (``SqliteStore.export_rows``) into an empty schema, in one transaction."""
        with self._transaction() as conn:
            for table in ("keys", "access_keys"):
                if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                    raise StoreError(f"metadata store: the PostgreSQL {table} table is not empty; "
                                     "migrate-store only fills a new database")
            with conn.cursor() as cursor:
                for table, rows in tables.items():
                    names = sql.SQL(", ").join(map(sql.Identifier, columns[table]))
                    marks = sql.SQL(", ").join(sql.Placeholder() * len(columns[table]))
                    cursor.executemany(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        sql.Identifier(table), names, marks), rows)

    def row_counts(self) -> dict[str, int]:
        tables = ("keys", "key_versions", "aliases", "tags", "pending_objects", "access_keys", "import_tokens",
                  "key_materials")
        return {table: self._read(f"SELECT COUNT(*) FROM {table}")[0][0] for table in tables}

    def schema_version(self) -> int:
        return self._read("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0][0]

    def close(self) -> None:
        if self._listener is not None and self._listener_pid == os.getpid():
            self._listener.stop()
        self._listener = None
        self._db.close()

    def ping(self) -> bool:
        return self._db.ping()

    def data_version(self) -> int:
        return self._read("SELECT counter FROM changes WHERE id = 1")[0][0]

    def change_counter(self) -> bytes:
        listener = self._listener
        if listener is None or self._listener_pid != os.getpid():
            listener = self._listener = _Listener(self._db, self.channel)
            self._listener_pid = os.getpid()
        if not listener.listening:  # a change may go unheard: let no cache be trusted
            return struct.pack("<qq", -1, next(self._unconfirmed))
        return struct.pack("<qq", listener.count, 0)

    def job_lock(self) -> PostgresJobLock:
        return PostgresJobLock(self._db, "jobs")

    # --- keys and versions ------------------------------------------------------------------------------

    def begin_object(self, pending: PendingObject) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO pending_objects VALUES (%s, %s, %s, %s)", astuple(pending))

    def finish_object(self, object_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM pending_objects WHERE object_id = %s", (object_id,))

    def pending_objects(self) -> list[PendingObject]:
        return [PendingObject(*row) for row in self._read(
            "SELECT object_id, key_id, purpose, created_at FROM pending_objects ORDER BY created_at, object_id")]

    def create_key(self, key: KeyRecord, version: VersionRecord, tags: list[TagRecord]) -> None:
        with self._transaction() as conn:
            conn.execute(f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({_KEY_PLACEHOLDERS})", astuple(key))
            conn.execute("INSERT INTO key_versions (version_id, key_id, created_at) VALUES (%s, %s, %s)",
                         astuple(version))
            if tags:
                conn.cursor().executemany("INSERT INTO tags VALUES (%s, %s, %s)", [astuple(t) for t in tags])
            conn.execute("DELETE FROM pending_objects WHERE object_id = %s", (version.version_id,))

    def add_version(self, version: VersionRecord, expected_last_rotation: int | None) -> bool:
        with self._transaction() as conn:
            updated = conn.execute(
                f"UPDATE keys SET primary_version_id = %s, last_rotation_at = %s WHERE key_id = %s AND {_LIVE}"
                " AND state = 'Enabled' AND last_rotation_at IS NOT DISTINCT FROM %s",
                (version.version_id, version.created_at, version.key_id, expected_last_rotation),
            ).rowcount
            if updated:
                conn.execute("INSERT INTO key_versions (version_id, key_id, created_at) VALUES (%s, %s, %s)",
                             astuple(version))
                conn.execute("DELETE FROM pending_objects WHERE object_id = %s", (version.version_id,))
            return bool(updated)

    def update_key(self, key_id: str, changes: dict, expected_state: str) -> bool:
        names = [name for name in changes if name in _KEY_FIELDS and name not in ("key_id", "destroyed_at")]
        if len(names) != len(changes):
            raise ValueError(f"not updatable: {sorted(set(changes) - set(names))}")
        assignments = ", ".join(f"{name} = %s" for name in names)
        with self._transaction() as conn:
            return conn.execute(
                f"UPDATE keys SET {assignments} WHERE key_id = %s AND state = %s AND {_LIVE}",
                (*changes.values(), key_id, expected_state),
            ).rowcount == 1

    def destroy_key(self, key_id: str, now: int) -> list[str]:
        with self._transaction() as conn:
            marked = conn.execute(
                f"UPDATE keys SET destroyed_at = %s WHERE key_id = %s AND state = 'PendingDeletion'"
                f" AND delete_at <= %s AND {_LIVE}",
                (now, key_id, now),
            ).rowcount
            if not marked:
                return []
            versions = [row[0] for row in conn.execute(
                "SELECT version_id FROM key_versions WHERE key_id = %s ORDER BY created_at, seq", (key_id,))]
            conn.cursor().executemany(
                "INSERT INTO pending_objects VALUES (%s, %s, 'destroy', %s) ON CONFLICT (object_id) DO UPDATE"
                " SET key_id = EXCLUDED.key_id, purpose = EXCLUDED.purpose, created_at = EXCLUDED.created_at",
                [(version_id, key_id, now) for version_id in versions])
            conn.execute("DELETE FROM aliases WHERE key_id = %s", (key_id,))
            conn.execute("DELETE FROM tags WHERE key_id = %s", (key_id,))
            return versions

    def get_key(self, key_id: str) -> KeyRecord | None:
        rows = self._read(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_id = %s AND {_LIVE}", (key_id,))
        return KeyRecord(*rows[0]) if rows else None

    def get_version(self, version_id: str) -> VersionRecord | None:
        rows = self._read(
            f"SELECT {_VERSION_COLUMNS} FROM key_versions v JOIN keys k USING (key_id)"
            f" WHERE v.version_id = %s AND k.{_LIVE}",
            (version_id,),
        )
        return VersionRecord(*rows[0]) if rows else None

    def list_keys(self, offset: int, limit: int, where: KeyFilter | None = None) -> tuple[list[KeyRecord], int]:
        condition, args = _key_filter_sql(where or KeyFilter())
        rows = self._read(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {condition} ORDER BY created_at, key_id LIMIT %s OFFSET %s",
            (*args, limit, offset),
        )
        total = self._read(f"SELECT COUNT(*) FROM keys WHERE {condition}", args)[0][0]
        return [KeyRecord(*row) for row in rows], total

    def list_versions(self, key_id: str, offset: int, limit: int) -> tuple[list[VersionRecord], int]:
        rows = self._read(
            f"SELECT {_VERSION_COLUMNS} FROM key_versions v WHERE v.key_id = %s"
            " ORDER BY v.created_at, v.seq LIMIT %s OFFSET %s",
            (key_id, limit, offset),
        )
        total = self._read("SELECT COUNT(*) FROM key_versions WHERE key_id = %s", (key_id,))[0][0]
        return [VersionRecord(*row) for row in rows], total

    def live_keys_and_versions(self, limit: int) -> tuple[list[KeyRecord], list[VersionRecord]]:
        keys = [KeyRecord(*row) for row in self._read(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE {_LIVE} ORDER BY created_at DESC LIMIT %s", (limit,))]
        versions = [VersionRecord(*row) for row in self._read(
            f"SELECT {_VERSION_COLUMNS} FROM key_versions v JOIN keys k USING (key_id)"
            f" WHERE k.{_LIVE} ORDER BY v.created_at DESC LIMIT %s", (limit,))]
        return keys, versions

    def all_versions(self) -> dict[str, bool]:
        rows = self._read("SELECT v.version_id, k.destroyed_at IS NULL FROM key_versions v JOIN keys k USING (key_id)")
        return dict(rows)

    def keys_due_for_deletion(self, now: int) -> list[str]:
        rows = self._read(
            f"SELECT key_id FROM keys WHERE state = 'PendingDeletion' AND delete_at <= %s AND {_LIVE}", (now,))
        return [row[0] for row in rows]

    def keys_due_for_rotation(self, now: int) -> list[KeyRecord]:
        rows = self._read(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE state = 'Enabled' AND {_LIVE} AND rotation_interval IS NOT NULL"
            " AND last_rotation_at + rotation_interval <= %s",
            (now,),
        )
        return [KeyRecord(*row) for row in rows]

    # --- key-material import -----------------------------------------------------------------------------

    def add_import_token(self, token: ImportTokenRecord) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO import_tokens VALUES (%s, %s, %s, %s, %s, %s)", astuple(token))
            conn.execute("DELETE FROM pending_objects WHERE object_id = %s", (token.wrapping_id,))

    def get_import_token(self, token_id: str) -> ImportTokenRecord | None:
        rows = self._read("SELECT * FROM import_tokens WHERE token_id = %s", (token_id,))
        return ImportTokenRecord(*rows[0]) if rows else None

    def expired_import_tokens(self, now: int) -> list[ImportTokenRecord]:
        return [ImportTokenRecord(*row) for row in self._read(
            "SELECT * FROM import_tokens WHERE expires_at <= %s ORDER BY expires_at", (now,))]

    def import_tokens(self) -> list[ImportTokenRecord]:
        return [ImportTokenRecord(*row) for row in self._read("SELECT * FROM import_tokens ORDER BY created_at")]

    def delete_import_token(self, token_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM import_tokens WHERE token_id = %s", (token_id,))

    def get_key_material(self, key_id: str) -> KeyMaterialRecord | None:
        rows = self._read("SELECT key_id, check_value, present, expires_at, imported_at FROM key_materials"
                          " WHERE key_id = %s", (key_id,))
        if not rows:
            return None
        key_id, check_value, present, expires_at, imported_at = rows[0]
        return KeyMaterialRecord(key_id, bytes(check_value), bool(present), expires_at, imported_at)

    def record_key_material(self, material: KeyMaterialRecord, version_id: str, expected_state: str) -> bool:
        with self._transaction() as conn:
            updated = conn.execute(
                f"UPDATE keys SET state = CASE WHEN state = 'PendingImport' THEN 'Enabled' ELSE state END"
                f" WHERE key_id = %s AND state = %s AND {_LIVE}", (material.key_id, expected_state)).rowcount
            if not updated:
                return False
            conn.execute(
                "INSERT INTO key_materials VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key_id) DO UPDATE SET"
                " check_value = excluded.check_value, present = excluded.present,"
                " expires_at = excluded.expires_at, imported_at = excluded.imported_at",
                (material.key_id, material.check_value, material.present, material.expires_at,
                 material.imported_at))
            conn.execute("DELETE FROM pending_objects WHERE object_id = %s", (version_id,))
            return True

    def clear_key_material(self, key_id: str, expected_state: str, destroy: PendingObject) -> bool:
        with self._transaction() as conn:
            updated = conn.execute(
                f"UPDATE keys SET state = CASE WHEN state = 'PendingDeletion' THEN state ELSE 'PendingImport' END"
                f" WHERE key_id = %s AND state = %s AND {_LIVE}", (key_id, expected_state)).rowcount
            if updated:
                conn.execute("UPDATE key_materials SET present = FALSE, expires_at = NULL WHERE key_id = %s",
                             (key_id,))
                conn.execute("INSERT INTO pending_objects VALUES (%s, %s, %s, %s)", astuple(destroy))
            return bool(updated)

    def expired_materials(self, now: int) -> list[str]:
        return [row[0] for row in self._read(
            f"SELECT m.key_id FROM key_materials m JOIN keys k USING (key_id) WHERE m.present"
            f" AND m.expires_at <= %s AND k.{_LIVE} ORDER BY m.expires_at", (now,))]

    def versions_without_material(self) -> set[str]:
        return {row[0] for row in self._read(
            f"SELECT k.primary_version_id FROM keys k LEFT JOIN key_materials m USING (key_id)"
            f" WHERE k.origin = 'EXTERNAL' AND k.{_LIVE} AND (m.present IS NULL OR NOT m.present)")}

    # --- tags --------------------------------------------------------------------------------------------

    def set_tags(self, tags: list[TagRecord]) -> None:
        with self._transaction() as conn:
            conn.cursor().executemany(
                "INSERT INTO tags VALUES (%s, %s, %s) ON CONFLICT (key_id, tag_key) DO UPDATE"
                " SET tag_value = EXCLUDED.tag_value", [astuple(t) for t in tags])

    def remove_tags(self, key_id: str, tag_keys: list[str] | None) -> None:
        with self._transaction() as conn:
            if tag_keys is None:
                conn.execute("DELETE FROM tags WHERE key_id = %s", (key_id,))
            else:
                conn.execute("DELETE FROM tags WHERE key_id = %s AND tag_key = ANY(%s)", (key_id, list(tag_keys)))

    def list_tags(self, key_ids: list[str] | None = None) -> list[TagRecord]:
        if key_ids is None:
            rows = self._read("SELECT key_id, tag_key, tag_value FROM tags ORDER BY key_id, tag_key")
        else:
            rows = self._read("SELECT key_id, tag_key, tag_value FROM tags WHERE key_id = ANY(%s)"
                              " ORDER BY key_id, tag_key", (list(key_ids),))
        return [TagRecord(*row) for row in rows]

    # --- aliases -----------------------------------------------------------------------------------------

    def create_alias(self, alias: AliasRecord) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO aliases VALUES (%s, %s, %s)", astuple(alias))

    def update_alias(self, alias_name: str, key_id: str, expected_key_id: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("UPDATE aliases SET key_id = %s WHERE alias_name = %s AND key_id = %s",
                                (key_id, alias_name, expected_key_id)).rowcount > 0

    def get_alias(self, alias_name: str) -> AliasRecord | None:
        rows = self._read("SELECT alias_name, key_id, created_at FROM aliases WHERE alias_name = %s", (alias_name,))
        return AliasRecord(*rows[0]) if rows else None

    def delete_alias(self, alias_name: str, expected_key_id: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM aliases WHERE alias_name = %s AND key_id = %s",
                                (alias_name, expected_key_id)).rowcount > 0

    def list_aliases(self, offset: int, limit: int, key_id: str | None = None) -> tuple[list[AliasRecord], int]:
        where, args = ("WHERE key_id = %s", (key_id,)) if key_id is not None else ("", ())
        rows = self._read(
            f"SELECT alias_name, key_id, created_at FROM aliases {where} ORDER BY alias_name LIMIT %s OFFSET %s",
            (*args, limit, offset),
        )
        total = self._read(f"SELECT COUNT(*) FROM aliases {where}", args)[0][0]
        return [AliasRecord(*row) for row in rows], total

    # --- access keys -------------------------------------------------------------------------------------

    def create_access_key(self, record: AccessKeyRecord) -> None:
        with self._transaction() as conn:
            conn.execute(f"INSERT INTO access_keys ({_ACCESS_KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         astuple(record))

    def get_access_key(self, access_key_id: str) -> AccessKeyRecord | None:
        rows = self._read(f"SELECT {_ACCESS_KEY_COLUMNS} FROM access_keys WHERE access_key_id = %s",
                          (access_key_id,))
        return AccessKeyRecord(*rows[0]) if rows else None

    def list_access_keys(self) -> list[AccessKeyRecord]:
        return [AccessKeyRecord(*row) for row in self._read(
            f"SELECT {_ACCESS_KEY_COLUMNS} FROM access_keys ORDER BY created_at, access_key_id")]

    def set_access_key_state(self, access_key_id: str, state: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("UPDATE access_keys SET state = %s WHERE access_key_id = %s",
                                (state, access_key_id)).rowcount > 0

    def delete_access_key(self, access_key_id: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM access_keys WHERE access_key_id = %s", (access_key_id,)).rowcount > 0

    def set_access_key_policy(self, access_key_id: str, policy: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("UPDATE access_keys SET policy = %s WHERE access_key_id = %s",
                                (policy, access_key_id)).rowcount > 0


class PostgresJobLock:
    """The background jobs run in the one process of the cluster that holds a session advisory lock.

    The lock lives on a connection of its own.  It is released when that session ends: at once when the
    holding process dies (its socket closes), within the keepalive time (JOB_LOCK_KEEPALIVES) when its node
    is gone from the network, and for everyone when PostgreSQL restarts.  Another process takes it at its
    next ``held()`` (the scheduler asks every interval).
    """

    def __init__(self, connections: _Connections, purpose: str):
        self._connections = connections
        self._purpose = purpose
        self._conn: psycopg.Connection | None = None
        self._pid = 0
        self._holding = False

    def held(self) -> bool:
        try:
            if self._conn is None or self._conn.closed or self._pid != os.getpid():
                if self._conn is not None and self._pid != os.getpid():
                    _inherited.append(self._conn)
                self._holding = False
                self._conn = self._connections.connect()
                self._pid = os.getpid()
                for name, value in JOB_LOCK_KEEPALIVES.items():
                    self._conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            if self._holding:
                self._conn.execute("SELECT 1")  # the session, hence the lock, is still there
            else:
                key = scope_hash(self._connections.schema(), self._purpose)
                self._holding = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
                if self._holding:
                    log.info("process %d now runs the background jobs", os.getpid())
            return self._holding
        except (psycopg.Error, StoreError) as exc:
            if self._holding:
                log.warning("lost the background-job lock: %s", str(exc).strip() or type(exc).__name__)
            self.close()
            return False

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
        self._holding = False


class PostgresNonces:
    """Signature nonces in an UNLOGGED table (not written to the WAL: disposable, as the file table is).

    A claim is one statement: an insert that, on a conflict, takes the row over only if it has expired; it
    returns a row when the nonce was free.  Expired rows are deleted every PRUNE_INTERVAL_S by one process at a
    time (a transaction advisory lock), in a thread off the request path.
    """

    PRUNE_INTERVAL_S = 10.0
    TABLE = """
        CREATE UNLOGGED TABLE IF NOT EXISTS nonces (
            digest BYTEA PRIMARY KEY,
            until BIGINT NOT NULL
        )"""

    def __init__(self, url: str, busy_timeout_ms: int = 5000, pool_size: int = DEFAULT_POOL_SIZE):
        self._db = _Connections(url, pool_size, busy_timeout_ms)
        self._pruner: threading.Thread | None = None
        self._pruner_pid = 0
        self._stop = threading.Event()

    def prepare(self, now: float) -> None:
        with self._db.connection() as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (scope_hash(self._db.schema(), "nonces"),))
                conn.execute(self.TABLE)

    def claim(self, access_key_id: str, nonce: str, now: float, expires: float) -> bool:
        if self._pruner_pid != os.getpid():
            self._start_pruner()
        data = f"{len(access_key_id)}:{access_key_id}{nonce}".encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(data, digest_size=16).digest()
        until = int(expires) + CLOCK_STEP_GRACE_S
        with self._db.connection() as conn:
            return conn.execute(
                "INSERT INTO nonces VALUES (%s, %s) ON CONFLICT (digest) DO UPDATE SET until = EXCLUDED.until"
                " WHERE nonces.until < %s RETURNING 1",
                (digest, until, int(now)),
            ).fetchone() is not None

    def _start_pruner(self) -> None:
        self._pruner_pid = os.getpid()
        self._stop = threading.Event()
        self._pruner = threading.Thread(target=self._prune_loop, name="hsmkms-nonce-pruner", daemon=True)
        self._pruner.start()

    def _prune_loop(self) -> None:
        while not self._stop.wait(self.PRUNE_INTERVAL_S):
            try:
                self.prune(time.time())
            except StoreError as exc:
                log.warning("could not delete expired nonces: %s", exc)

    def prune(self, now: float) -> int:
        """Delete the nonces expired at ``now`` unless another process is doing it; how many were deleted."""
        with self._db.connection() as conn:
            with conn.transaction():
                if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                    (scope_hash(self._db.schema(), "nonces-prune"),)).fetchone()[0]:
                    return 0
                return conn.execute("DELETE FROM nonces WHERE until < %s", (int(now),)).rowcount

    def ping(self) -> bool:
        return self._db.ping()

    def close(self) -> None:
        self._stop.set()
        if self._pruner is not None and self._pruner_pid == os.getpid():
            self._pruner.join(1)
        self._pruner = None
        self._pruner_pid = 0
        self._db.close()
