"""Which metadata store and which nonce cache a deployment uses, from its settings.

- ``[store] url`` empty: SQLite at ``[store] path`` (one machine); ``postgresql://...``: PostgreSQL.
- ``[auth] nonce_url`` empty: the file table ``<data_dir>/nonces.bin`` with SQLite, and the metadata
  database's UNLOGGED table with PostgreSQL (every node must share one cache); ``redis://...``: Redis;
  ``postgresql://...``: an UNLOGGED table in that database.
"""

from __future__ import annotations

from hsmkms.settings import Settings
from hsmkms.store.base import NonceCache, Store
from hsmkms.store.nonces import PAGES_PER_MIB, NonceStore


def open_store(settings: Settings) -> Store:
    if settings.uses_postgres:
        from hsmkms.store.postgres import PostgresStore

        return PostgresStore(settings.store_url, settings.busy_timeout_ms, settings.store_pool_size)
    from hsmkms.store.sqlite import SqliteStore

    return SqliteStore(settings.database_path, settings.busy_timeout_ms)


def open_nonce_cache(settings: Settings) -> NonceCache:
    url = settings.nonce_url or settings.store_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        from hsmkms.store.redis_nonces import RedisNonces

        return RedisNonces(url)
    if url:
        from hsmkms.store.postgres import PostgresNonces

        return PostgresNonces(url, settings.busy_timeout_ms, settings.store_pool_size)
    return NonceStore(settings.nonces_path, settings.nonce_table_mib * PAGES_PER_MIB)
