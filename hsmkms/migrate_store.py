"""``hsmkms migrate-store``: move a deployment's metadata from SQLite to PostgreSQL.

With the server stopped and ``[store] url`` added to the configuration, the command copies every row of the
SQLite database at ``[store] path`` (keys, including destroyed ones, versions, aliases, tags, the journal of
HSM operations, access keys with their sealed secrets and policies) into the PostgreSQL database, in one
transaction, and checks the row counts.  The keys stay where they are, in the HSM; the access keys' secrets
stay sealed by the HSM service key, so every ciphertext and every access key works as before.  The SQLite
file is left as it was (its schema upgraded to the latest), to keep or to remove.

Nonces are not carried over (the file table keeps them only as keyed digests): a request signed in the
``[auth] clock_skew_seconds`` before the move could be replayed once after it.  Keep the service stopped
for that long, or accept it.
"""

from __future__ import annotations

from hsmkms.settings import Settings
from hsmkms.store.postgres import PostgresStore
from hsmkms.store.sqlite import EXPORTED_TABLES, SqliteStore


class MigrationError(Exception):
    """The move cannot be made; the message says why."""


def migrate_store(settings: Settings) -> dict[str, int]:
    """Copy the SQLite metadata into the (empty) PostgreSQL database; returns the rows copied per table."""
    if not settings.uses_postgres:
        raise MigrationError("set [store] url to the PostgreSQL database to move the metadata to")
    if not settings.database_path.is_file():
        raise MigrationError(f"no SQLite database at {settings.database_path} ([store] path)")
    source = SqliteStore(settings.database_path, settings.busy_timeout_ms)
    target = PostgresStore(settings.store_url, settings.busy_timeout_ms)
    try:
        source.migrate()
        target.migrate()
        rows = source.export_rows()
        target.import_rows(rows, {table: columns for table, (columns, _) in EXPORTED_TABLES.items()})
        copied = target.row_counts()
    finally:
        source.close()
        target.close()
    expected = {table: len(table_rows) for table, table_rows in rows.items()}
    if copied != expected:
        raise MigrationError(f"PostgreSQL holds {copied} rows after the copy, SQLite {expected}")
    return copied
