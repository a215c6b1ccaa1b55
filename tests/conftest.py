"""Fixtures shared by the integration and end-to-end tests: a SoftHSM token in a temporary directory.

SoftHSM reads SOFTHSM2_CONF once, when the library is initialised in a process, so the in-process tests
share one token for the session (found by label); live servers get tokens of their own.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from hsmkms import provision
from hsmkms.app import Runtime, build_runtime
from hsmkms.hsm.pkcs11 import Pkcs11Backend, attribute_mapper
from hsmkms.hsm.pkcs11 import native
from hsmkms.settings import Settings


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


@contextmanager
def token_session(settings: Settings):
    """A python-pkcs11 session of its own on the test token, beside the backend's: for tests that look at the
    token directly.  The process is logged in already (the backend did it), so no PIN is given."""
    module = native.module(settings.module, settings.init_reserved or None)
    token = module.lib.get_token(token_label=settings.token_label)
    with token.open(rw=True, attribute_mapper=attribute_mapper()) as session:
        yield session
