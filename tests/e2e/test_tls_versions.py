"""TLS of ``hsmkms serve``: 1.2 and 1.3, ECDHE key exchange with AEAD ciphers only, the minimum configurable.

Many deployed clients, and load balancers that re-encrypt, speak TLS 1.2 only.
"""

from __future__ import annotations

import re
import socket
import ssl

import pytest

from tests.e2e.sdk import TeaSdk
from tests.e2e.server import LiveServer, provision_server

# OpenSSL's names of what a client may offer under TLS 1.2 that the server must refuse: CBC ciphers (with
# and without ECDHE) and RSA key exchange (with AEAD ciphers too).
CBC_SUITES = ("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
              "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA:AES256-SHA:AES128-SHA256:AES256-SHA256")
RSA_KEY_EXCHANGE = "AES128-GCM-SHA256:AES256-GCM-SHA384"
MODERN_TLS12 = re.compile(r"ECDHE-(ECDSA|RSA)-(AES128-GCM-SHA256|AES256-GCM-SHA384|CHACHA20-POLY1305)\Z")


def start(root, min_version: str | None = None) -> LiveServer:
    live = provision_server(root, workers=1, tls=True)
    if min_version:
        live.env["HSMKMS_SERVER_TLS_MIN_VERSION"] = min_version
    live.start()
    return live


@pytest.fixture(scope="module")
def tls_default(tmp_path_factory) -> LiveServer:
    live = start(tmp_path_factory.mktemp("tls-default"))
    yield live
    assert live.stop() == 0, live.log()


@pytest.fixture(scope="module")
def tls13_only(tmp_path_factory) -> LiveServer:
    live = start(tmp_path_factory.mktemp("tls-13"), "1.3")
    yield live
    assert live.stop() == 0, live.log()


def client_context(live: LiveServer, version: ssl.TLSVersion | None = None, ciphers: str | None = None):
    context = ssl.create_default_context(cafile=str(live.ca))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers + ":@SECLEVEL=0")  # offer them even where OpenSSL would not by default
    return context


def healthz(live: LiveServer, context: ssl.SSLContext) -> tuple[str, tuple, bytes]:
    """(version, cipher, first line of the answer) of GET /healthz over a fresh TLS connection."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return sock.version(), sock.cipher(), answer.split(b"\r\n", 1)[0]


def test_a_client_limited_to_tls_1_2_connects_with_ecdhe_and_aead(tls_default: LiveServer):
    version, cipher, status = healthz(tls_default, client_context(tls_default, ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2"
    assert MODERN_TLS12.match(cipher[0]), cipher
    assert status == b"HTTP/1.1 200 OK"


def test_tls_1_3_still_works_and_an_sdk_call_succeeds(tls_default: LiveServer):
    version, cipher, status = healthz(tls_default, client_context(tls_default, ssl.TLSVersion.TLSv1_3))
    assert version == "TLSv1.3"
    assert cipher[0] in {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"}
    assert status == b"HTTP/1.1 200 OK"
    client = TeaSdk(tls_default.endpoint, tls_default.access_key_id, tls_default.access_key_secret,
                    ca=str(tls_default.ca))
    assert client.call("GenerateDataKey", KeyId=tls_default.alias)["KeyId"]


@pytest.mark.parametrize("ciphers", [CBC_SUITES, RSA_KEY_EXCHANGE], ids=["cbc", "rsa-key-exchange"])
def test_a_tls_1_2_client_offering_only_weak_suites_is_refused(tls_default: LiveServer, ciphers: str):
    with pytest.raises(ssl.SSLError) as refused:
        healthz(tls_default, client_context(tls_default, ssl.TLSVersion.TLSv1_2, ciphers))
    assert "ALERT_HANDSHAKE_FAILURE" in str(refused.value)  # the server's refusal, not the client's
    # The same client with the modern suites connects: the refusal is the suites', not the client's.
    assert healthz(tls_default, client_context(tls_default, ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"


def test_with_minimum_1_3_a_tls_1_2_client_is_refused(tls13_only: LiveServer):
    with pytest.raises(ssl.SSLError) as refused:
        healthz(tls13_only, client_context(tls13_only, ssl.TLSVersion.TLSv1_2))
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value)
    assert healthz(tls13_only, client_context(tls13_only, ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
