"""Live servers for the end-to-end session (one per test token, started when first needed), and official-SDK
clients pointed at them.  ``server`` is the SoftHSM one; a module that runs on every token overrides ``server``
with a fixture parametrised over ``TOKENS`` that takes ``live_servers(token)``."""

from __future__ import annotations

import pytest

from tests.conftest import TOKENS
from tests.e2e.inprocess import InProcessServer, start_in_process
from tests.e2e.sdk import LegacySdk, TeaSdk
from tests.e2e.server import LiveServer, provision_server

SDK_NAMES = ["tea-v3", "tea-v2", "legacy"]


@pytest.fixture(scope="session")
def live_servers(tmp_path_factory):
    started: dict[str, LiveServer] = {}

    def get(token: str) -> LiveServer:
        if token not in started:
            live = provision_server(tmp_path_factory.mktemp(f"live-{token}"), workers=2, token=token)
            live.start()
            started[token] = live
        return started[token]

    yield get
    for live in started.values():
        assert live.stop() == 0, live.log()
        # No request in the suite may have produced a 5xx: the server logs every one of them.
        failures = live.error_lines()
        assert not failures, "\n".join(failures)


@pytest.fixture(scope="session")
def server(live_servers) -> LiveServer:
    return live_servers(TOKENS[0])


@pytest.fixture(scope="module")
def clocked(hsm_settings, hsm, tmp_path_factory) -> InProcessServer:
    """An in-process server whose key lifecycle runs on an injected clock (one per test module)."""
    server, stop = start_in_process(hsm_settings, hsm, tmp_path_factory.mktemp("clocked"))
    yield server
    stop()


def make_sdk(name: str, server: LiveServer | InProcessServer, access_key_id: str | None = None,
             secret: str | None = None):
    access_key_id = access_key_id or server.access_key_id
    secret = secret or server.access_key_secret
    if name == "tea-v3":
        return TeaSdk(server.endpoint, access_key_id, secret)
    if name == "tea-v2":
        return TeaSdk(server.endpoint, access_key_id, secret, signature_algorithm="v2")
    return LegacySdk(server.endpoint, access_key_id, secret)


@pytest.fixture(params=SDK_NAMES)
def sdk(request, server: LiveServer):
    """Each test using this runs once per official SDK and signature scheme."""
    return make_sdk(request.param, server)


@pytest.fixture
def tea(server: LiveServer) -> TeaSdk:
    return make_sdk("tea-v3", server)


@pytest.fixture
def legacy(server: LiveServer) -> LegacySdk:
    return make_sdk("legacy", server)


@pytest.fixture
def new_key(tea: TeaSdk) -> str:
    return tea.call("CreateKey", Description="e2e")["KeyMetadata"]["KeyId"]
