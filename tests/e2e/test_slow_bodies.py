"""Slow and stalled request bodies cannot starve the service (HTTP and HTTPS).

A client that sends the head of a request and part of its body, then nothing (or a byte a second), must
neither hold a worker nor be waited for past ``[server] body_timeout_seconds``: meanwhile signed requests
from the official SDKs on other connections are answered as usual, and the slow request itself is answered
``RequestTimeout`` (408, the Alibaba JSON shape) at the deadline, and its connection closed.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid
from urllib.parse import urlencode

import pytest

from hsmkms.api.auth import v1_signature, v1_string_to_sign
from tests.e2e.sdk import LegacySdk, TeaSdk
from tests.e2e.server import LiveServer, provision_server

DEADLINE_S = 4  # the server's body_timeout_seconds in this module
STALLED = 200
HALF_SENT = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
             b"Content-Length: 1000\r\n\r\nAction=")


@pytest.fixture(scope="module", params=["http", "https"])
def slow_server(request, tmp_path_factory) -> LiveServer:
    live = provision_server(tmp_path_factory.mktemp(f"slow-{request.param}"), workers=2,
                            tls=request.param == "https")
    live.env["HSMKMS_SERVER_BODY_TIMEOUT_SECONDS"] = str(DEADLINE_S)
    live.start()
    yield live
    assert live.stop() == 0, live.log()
    assert not live.error_lines(), "\n".join(live.error_lines())


def connect(live: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE_S + 10)
    if live.ca:
        sock = ssl.create_default_context(cafile=str(live.ca)).wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def answered_or_closed(sock: socket.socket) -> bool:
    """Whether the server has sent anything (or closed) on this connection yet, without waiting."""
    sock.setblocking(False)
    try:
        sock.recv(1)
        return True
    except (BlockingIOError, ssl.SSLWantReadError):  # nothing yet (TLS: no application data yet)
        return False
    finally:
        sock.settimeout(DEADLINE_S + 10)


def read_until_closed(sock: socket.socket) -> bytes:
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def assert_request_timeout(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"\r\ncontent-type: application/json;charset=utf-8" in head.lower()
    document = json.loads(body)
    assert set(document) == {"RequestId", "HostId", "Code", "Message"}
    assert document["Code"] == "RequestTimeout"


def sdk_clients(live: LiveServer) -> list:
    """Fresh clients (so fresh connections, spread over both workers), with a short read timeout."""
    ca = str(live.ca) if live.ca else None
    clients = [TeaSdk(live.endpoint, live.access_key_id, live.access_key_secret, ca=ca, read_timeout_s=2),
               TeaSdk(live.endpoint, live.access_key_id, live.access_key_secret, signature_algorithm="v2", ca=ca,
                      read_timeout_s=2)]
    if not ca:  # the legacy SDK takes its CA bundle from the environment only
        clients.append(LegacySdk(live.endpoint, live.access_key_id, live.access_key_secret, timeout_s=2))
    return clients


def test_half_sent_bodies_do_not_starve_signed_requests(slow_server: LiveServer):
    opened = time.monotonic()
    stalled = []
    try:
        for _ in range(STALLED):
            sock = connect(slow_server)
            stalled.append(sock)
            sock.sendall(HALF_SENT)
        for _ in range(3):
            for client in sdk_clients(slow_server):
                data_key = client.call("GenerateDataKey", KeyId=slow_server.alias)
                assert client.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == \
                    data_key["Plaintext"]
        answered = time.monotonic()
        # The stalled connections were all still held open, unanswered, while the SDKs were answered.
        assert not [sock for sock in stalled if answered_or_closed(sock)]
        assert answered - opened < DEADLINE_S, "too slow to show anything: the deadline passed meanwhile"
        # At the deadline each one is answered 408 and closed.
        for sock in stalled:
            assert_request_timeout(read_until_closed(sock))
        assert time.monotonic() - opened < DEADLINE_S + 5
    finally:
        for sock in stalled:
            sock.close()


def test_a_body_that_stops_is_answered_408_at_the_deadline(slow_server: LiveServer):
    with connect(slow_server) as sock:
        sock.sendall(HALF_SENT)
        sent = time.monotonic()
        answer = read_until_closed(sock)
        waited = time.monotonic() - sent
    assert_request_timeout(answer)
    assert DEADLINE_S - 0.5 < waited < DEADLINE_S + 3
    request_id = json.loads(answer.partition(b"\r\n\r\n")[2])["RequestId"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the audit writer writes every 100 ms
        records = [json.loads(line) for line in (slow_server.data_dir / "audit.log").read_text().splitlines()]
        mine = [record for record in records if record["request_id"] == request_id]
        if mine:
            break
        time.sleep(0.05)
    assert [(r["outcome"], r["http_status"]) for r in mine] == [("RequestTimeout", 408)]


def test_a_body_trickling_a_byte_a_second_is_cut_off_at_the_deadline(slow_server: LiveServer):
    rest = b"ction=DescribeKey&Version=2016-01-20&KeyId=" + b"x" * 900
    sent = []
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        for byte in rest:
            if stop.wait(1.0):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return
            sent.append(byte)

    with connect(slow_server) as sock:
        sock.sendall(HALF_SENT.removesuffix(b"Action=") + b"A")
        started = time.monotonic()
        sender = threading.Thread(target=trickle, args=(sock,), daemon=True)
        sender.start()
        try:
            answer = read_until_closed(sock)
            waited = time.monotonic() - started
        finally:
            stop.set()
            sender.join(5)
    assert_request_timeout(answer)
    assert len(sent) >= DEADLINE_S - 2  # the body kept coming, a byte a second, and was cut off all the same
    assert DEADLINE_S - 0.5 < waited < DEADLINE_S + 3


def test_a_signed_body_sent_in_chunks_with_pauses_is_answered(slow_server: LiveServer):
    values = {"Action": "GenerateDataKey", "Version": "2016-01-20", "Format": "JSON",
              "AccessKeyId": slow_server.access_key_id, "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
              "SignatureNonce": uuid.uuid4().hex, "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "KeyId": slow_server.alias}
    values["Signature"] = v1_signature(slow_server.access_key_secret, v1_string_to_sign("POST", values))
    body = urlencode(values).encode()
    with connect(slow_server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for start in range(0, len(body), 100):
            piece = body[start:start + 100]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(DEADLINE_S / 20)  # slow, but whole within the deadline
        sock.sendall(b"0\r\n\r\n")
        answer = read_until_closed(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:500]
    assert b'"Plaintext"' in payload
