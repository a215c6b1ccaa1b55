"""Fixtures shared by the integration and end-to-end tests: a SoftHSM token in a temporary directory.

SoftHSM reads SOFTHSM2_CONF once, when the library is initialised in a process, so the in-process tests
share one token for the session (found by label); live servers get tokens of their own.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from hsmkms import provision
from hsmkms.app import Runtime, build_runtime
from hsmkms.hsm.pkcs11 import Pkcs11Backend
from hsmkms.settings import Settings
from tests import services


@pytest.fixture(scope="session")
def hsm_settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("softhsm")
    settings = Settings(
        data_dir=root,
        token_label="hsmkms-test",
        pin_file=root / "token.pin",
        softhsm_token_dir=root / "tokens",
    )
    provision.ensure_softhsm_token(settings)  # also points SOFTHSM2_CONF at it
    return settings


@pytest.fixture(scope="session")
def hsm(hsm_settings: Settings) -> Pkcs11Backend:
    backend = Pkcs11Backend(hsm_settings.module, hsm_settings.token_label, hsm_settings.read_pin)
    backend.open()
    yield backend
    backend.close()


@pytest.fixture
def runtime(hsm_settings: Settings, hsm: Pkcs11Backend, tmp_path: Path) -> Runtime:
    """Services over the session's token and a fresh metadata store."""
    settings = dataclasses.replace(hsm_settings, data_dir=tmp_path, softhsm_token_dir=None)
    rt = build_runtime(settings, hsm=hsm)
    rt.store.migrate()
    rt.services.access_keys.ensure_service_key()
    yield rt
    rt.store.close()
    rt.nonces.close()


@pytest.fixture
def loose_umask():
    """A umask that would leave new files world-readable, so only the code's own modes keep them private."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- PostgreSQL and Redis (tests/services.py) ----------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> str:
    """The URL of a PostgreSQL server the tests may create databases on: the machine's, or a private one."""
    url = os.environ.get(services.POSTGRES_URL_ENV, services.DEFAULT_POSTGRES_URL)
    if services.postgres_answers(url):
        yield url
        return
    private = services.PrivatePostgres(tmp_path_factory.mktemp("postgres"))
    try:
        private.start()
        yield private.url
    finally:
        private.remove()


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A database of this test's own (removed afterwards)."""
    url = services.create_database(postgres_server)
    yield url
    services.drop_database(postgres_server, url)


@pytest.fixture
def postgres_schema_url(postgres_server: str) -> str:
    """A schema of this test's own in the server's database (cheaper than a database; removed afterwards)."""
    url = services.create_schema(postgres_server)
    yield url
    services.drop_schema(postgres_server, url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> str:
    url = os.environ.get(services.REDIS_URL_ENV, services.DEFAULT_REDIS_URL)
    if services.redis_answers(url):
        yield url
        return
    private = services.PrivateRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield private.url
    finally:
        private.remove()
