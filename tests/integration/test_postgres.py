"""What only the PostgreSQL store has: the background-job lock, the change listener, failures of the server."""

from __future__ import annotations

import time

import psycopg
import pytest

from hsmkms import backup
from hsmkms.settings import Settings
from hsmkms.store.base import AccessKeyRecord, StoreError
from hsmkms.store.postgres import MIGRATIONS, PostgresStore
from tests.services import free_port

SETTLE_S = 5.0


def wait_until(condition, timeout: float = SETTLE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def stores(postgres_schema_url):
    opened = []

    def open_store() -> PostgresStore:
        store = PostgresStore(postgres_schema_url, busy_timeout_ms=2000)
        store.migrate()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def terminate(url: str, condition: str, args: tuple = ()) -> int:
    """End the server sessions of hsmkms connections that match ``condition`` (as a failover or an
    administrator would); how many were ended."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(pg_terminate_backend(a.pid, 5000)) FROM pg_stat_activity a"
            " WHERE a.application_name = 'hsmkms'"
            f" AND a.pid <> pg_backend_pid() AND a.datname = current_database() AND {condition}", args).fetchone()[0]


def lock_holder(key: int) -> str:
    """The condition on pg_stat_activity ``a`` for the session holding advisory lock ``key``."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return (f"a.pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            f" AND classid = {unsigned >> 32}::oid AND objid = {unsigned & 0xFFFFFFFF}::oid AND objsubid = 1)")


def test_an_unreachable_database_is_a_store_error():
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/hsmkms", busy_timeout_ms=1000)
    started = time.monotonic()
    with pytest.raises(StoreError):
        store.get_key("x")
    with pytest.raises(StoreError):
        store.migrate()
    assert not store.ping()
    assert time.monotonic() - started < 10
    store.close()


def test_a_schema_newer_than_the_code_is_refused(stores, postgres_schema_url):
    store = stores()
    with psycopg.connect(postgres_schema_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(StoreError, match="newer"):
        store.migrate()


def test_one_process_holds_the_job_lock_and_another_takes_it_over(stores, postgres_schema_url):
    store = stores()
    first, second, third = (stores().job_lock() for _ in range(3))
    assert first.held()
    assert not second.held() and not third.held()
    assert first.held()  # still, at every tick
    first.close()  # the holder dies: its session ends (the server notices in a moment)
    wait_until(second.held)
    assert not third.held()
    # The server ends the holder's session (a failover, an administrator): the holder notices at its next
    # tick, and the lock goes to the next process that asks.
    assert terminate(postgres_schema_url, lock_holder(store.lock_key("jobs"))) == 1
    assert not second.held()
    wait_until(third.held)
    assert not second.held()
    second.close()
    third.close()


def test_a_job_lock_that_cannot_reach_the_database_is_not_held():
    lock = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/hsmkms").job_lock()
    assert not lock.held()
    lock.close()


def test_caches_are_not_trusted_while_nobody_listens(stores, postgres_schema_url):
    store, writer = stores(), stores()
    store.change_counter()
    wait_until(lambda: store.change_counter() == store.change_counter())  # listening: one stable value
    assert terminate(postgres_schema_url, "a.query LIKE 'LISTEN%%'") == 1
    # The listener lost its connection: every read differs until it listens again, then it is stable anew.
    wait_until(lambda: store.change_counter() != store.change_counter())
    wait_until(lambda: store.change_counter() == store.change_counter())
    before = store.change_counter()
    writer.create_access_key(AccessKeyRecord("LTAIx", b"i", b"s", "Enabled", "", 1, "{}"))
    wait_until(lambda: store.change_counter() != before, timeout=1.0)


def test_a_connection_the_server_ended_is_replaced_rather_than_failing_a_request(stores, postgres_schema_url):
    """After PostgreSQL restarted (or an administrator ended sessions), the first request on each pooled
    connection is not a 503."""
    store = stores()
    assert store.get_key("x") is None  # the pool holds a connection now
    assert terminate(postgres_schema_url, "a.query NOT LIKE 'LISTEN%%'") >= 1
    assert store.get_key("x") is None
    assert store.ping()


def test_backup_and_restore_point_a_postgres_deployment_to_postgres_tools(tmp_path, postgres_schema_url):
    settings = Settings(data_dir=tmp_path, store_url=postgres_schema_url)
    for attempt in (lambda: backup.backup(settings, tmp_path / "backup"),
                    lambda: backup.restore(settings, tmp_path, force=True)):
        with pytest.raises(backup.BackupError, match="pg_dump"):
            attempt()
    assert not (tmp_path / "backup").exists() and not settings.database_path.exists()
