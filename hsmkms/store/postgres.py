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
- **Data methods** (keys, versions, aliases, tags, access keys ...): their statements are shared with SQLite
  in ``sql.SqlStore``; this module gives them connections and transactions.

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

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from hsmkms.store.base import AlreadyExists, StoreError
from hsmkms.store.nonces import CLOCK_STEP_GRACE_S
from hsmkms.store.sql import Dialect, SqlStore

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


class PostgresStore(SqlStore):
    dialect = Dialect(placeholder="%s", null_safe_equal="IS NOT DISTINCT FROM", version_order="created_at, seq",
                      array_parameters=True)

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
