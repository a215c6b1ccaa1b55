"""Fixtures shared by the integration and end-to-end tests: the tokens they run on (tests/tokens.py).

``hsm_settings`` / ``hsm`` are parametrised over every test token (SoftHSM and NSS softoken, or the operator's
own token named by HSMKMS_TEST_HSM_*): a test that uses them runs once per token.  ``base_settings`` /
``base_hsm`` are the first of them alone (SoftHSM), for tests about something other than the token.

A module reads its configuration once, when it is initialised in a process, so the in-process tests share one
token of each kind for the session (one backend each); live servers get tokens of their own.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from hsmkms.app import Runtime, build_runtime
from hsmkms.hsm.pkcs11 import Pkcs11Backend, attribute_mapper, native
from hsmkms.settings import Settings
from tests import services, tokens
from tests.tokens import token_names, token_settings

TOKENS = token_names()


class TokenPool:
    """One token and one logged-in backend per kind, made when first asked for, closed at the session's end."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._settings: dict[str, Settings] = {}
        self._backends: dict[str, Pkcs11Backend] = {}

    def settings(self, name: str) -> Settings:
        if name not in self._settings:
            self._settings[name] = token_settings(name, self._tmp.mktemp(name))
        return self._settings[name]

    def backend(self, name: str) -> Pkcs11Backend:
        if name not in self._backends:
            settings = self.settings(name)
            backend = tokens.backend(settings)
            backend.open()
            self._backends[name] = backend
        return self._backends[name]

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()


@pytest.fixture(scope="session")
def token_pool(tmp_path_factory) -> TokenPool:
    pool = TokenPool(tmp_path_factory)
    yield pool
    pool.close()


@pytest.fixture(scope="session", params=TOKENS)
def token_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def hsm_settings(token_pool: TokenPool, token_name: str) -> Settings:
    return token_pool.settings(token_name)


@pytest.fixture(scope="session")
def hsm(token_pool: TokenPool, token_name: str) -> Pkcs11Backend:
    return token_pool.backend(token_name)


@pytest.fixture(scope="session")
def base_settings(token_pool: TokenPool) -> Settings:
    return token_pool.settings(TOKENS[0])


@pytest.fixture(scope="session")
def base_hsm(token_pool: TokenPool) -> Pkcs11Backend:
    return token_pool.backend(TOKENS[0])


def runtime_over(settings: Settings, backend: Pkcs11Backend, data_dir: Path) -> Runtime:
    """Services over a session token and a fresh metadata store in ``data_dir``."""
    settings = dataclasses.replace(settings, data_dir=data_dir, softhsm_token_dir=None)
    rt = build_runtime(settings, hsm=backend)
    rt.store.migrate()
    rt.services.access_keys.ensure_service_key()
    return rt


@pytest.fixture
def runtime(hsm_settings: Settings, hsm: Pkcs11Backend, tmp_path: Path) -> Runtime:
    rt = runtime_over(hsm_settings, hsm, tmp_path)
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
@contextmanager
def token_session(settings: Settings):
    """A python-pkcs11 session of its own on the test token, beside the backend's: for tests that look at the
    token directly.  The process is logged in already (the backend did it), so no PIN is given."""
    module = native.module(settings.module, settings.init_reserved or None)
    user = object()
    module.acquire(user)
    try:
        token = module.lib.get_token(token_label=settings.token_label)
        with token.open(rw=True, attribute_mapper=attribute_mapper()) as session:
            yield session
    finally:
        module.release(user)
