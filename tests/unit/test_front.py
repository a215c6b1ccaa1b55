"""hsmkms.front: the WSGI environ made from an RSGI request, and bodies read whole, bounded and under a deadline.

The protocol object here stands in for granian's (its awaitable body and chunk iterator); the live server
tests (tests/e2e/test_slow_bodies.py) drive the real one.
"""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from hsmkms.api.rpc import read_body
from hsmkms.errors import ParseRequestParameterException, RequestTimeout, RequestTooLarge
from hsmkms.front import WsgiFront, wsgi_environ

LIMIT = 100


class Headers:
    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)


class Scope:
    proto = "http"
    http_version = "1.1"
    server = "127.0.0.1:8080"
    client = "127.0.0.2:50000"
    scheme = "https"
    method = "POST"
    authority = None

    def __init__(self, headers: list[tuple[str, str]], path: str = "/", query_string: str = ""):
        self.headers = Headers(headers)
        self.path = path
        self.query_string = query_string


class Protocol:
    """Sends ``chunks`` one at a time, ``pause`` seconds apart; ``forever`` then never ends the body."""

    def __init__(self, chunks: list[bytes], pause: float = 0.0, forever: bool = False, broken: bool = False):
        self.chunks, self.pause, self.forever, self.broken = chunks, pause, forever, broken
        self.answer = None
        self.read = 0

    async def _next(self) -> bytes:
        await asyncio.sleep(self.pause)
        if self.read < len(self.chunks):
            self.read += 1
            return self.chunks[self.read - 1]
        if self.broken:
            raise RuntimeError("stream error")
        if self.forever:
            await asyncio.sleep(3600)
        return b""

    # granian's protocol hands out futures (cancellable), not coroutines.
    def __call__(self) -> asyncio.Future:
        return asyncio.ensure_future(self._whole())

    async def _whole(self) -> bytes:
        body = b""
        while chunk := await self._next():
            body += chunk
        return body

    def __aiter__(self):
        return self

    def __anext__(self) -> asyncio.Future:
        return asyncio.ensure_future(self._next())

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answer = (status, headers, body)


def serve(headers: list[tuple[str, str]], protocol: Protocol, timeout: float = 5.0) -> tuple[dict, tuple]:
    """Run one request through the front; returns the environ the application saw and the answer."""
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        try:
            body = read_body(environ, LIMIT)
            status, text = "200 OK", b"read " + body
        except (RequestTimeout, RequestTooLarge, ParseRequestParameterException) as err:
            status, text = f"{err.status} X", err.code.encode()
        start_response(status, [("Content-Type", "text/plain")])
        return [text]

    asyncio.run(WsgiFront(app, LIMIT, timeout).__rsgi__(Scope(headers), protocol))
    return seen, protocol.answer


def test_environ_as_pep_3333_and_granian_make_it():
    scope = Scope([("host", "kms.example"), ("content-type", "application/x-www-form-urlencoded"),
                   ("content-length", "7"), ("x-acs-action", "Encrypt"), ("accept", "a"), ("accept", "b"),
                   ("cookie", "x=1"), ("cookie", "y=2")], path="/caf\u00e9", query_string="a=%20&b")
    environ = wsgi_environ(scope)
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9"  # the UTF-8 bytes, as latin-1
    assert environ["QUERY_STRING"] == "a=%20&b"
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("application/x-www-form-urlencoded", "7")
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_X_ACS_ACTION"] == "Encrypt"
    assert environ["HTTP_ACCEPT"] == "a,b"
    assert environ["HTTP_COOKIE"] == "x=1; y=2"
    assert environ["HTTP_HOST"] == "kms.example"
    assert (environ["REMOTE_ADDR"], environ["SERVER_NAME"], environ["SERVER_PORT"]) == (
        "127.0.0.2", "127.0.0.1", "8080")
    assert (environ["wsgi.url_scheme"], environ["SERVER_PROTOCOL"], environ["SCRIPT_NAME"]) == (
        "https", "HTTP/1.1", "")


def test_ipv6_addresses_lose_their_brackets():
    scope = Scope([])
    scope.server, scope.client = "[::1]:8443", "[::1]:50000"
    environ = wsgi_environ(scope)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"], environ["REMOTE_ADDR"]) == ("::1", "8443", "::1")
    assert environ["HTTP_HOST"] == ""


def test_a_body_framed_by_its_length_is_read_whole():
    _, answer = serve([("content-length", "11")], Protocol([b"Action=", b"Enc"]))
    assert answer == (200, [("Content-Type", "text/plain")], b"read Action=Enc")


def test_a_body_declared_over_the_limit_is_not_read():
    protocol = Protocol([b"x" * (LIMIT + 1)])
    _, answer = serve([("content-length", str(LIMIT + 1))], protocol)
    assert answer[0] == 400 and answer[2] == b"InvalidParameter"
    assert protocol.read == 0


def test_a_chunked_body_is_read_to_one_byte_over_the_limit_and_no_further():
    protocol = Protocol([b"x" * 60, b"y" * 60, b"z" * 60])
    _, answer = serve([("transfer-encoding", "chunked")], protocol)
    assert answer[0] == 400 and answer[2] == b"InvalidParameter"
    assert protocol.read == 2


def test_a_chunked_body_within_the_limit():
    _, answer = serve([("transfer-encoding", "chunked")], Protocol([b"a=1", b"&b=2"]))
    assert answer[2] == b"read a=1&b=2"


def test_a_request_without_a_body_is_not_read():
    seen, answer = serve([], Protocol([b"ignored"]))
    assert answer[2] == b"read "
    assert isinstance(seen["wsgi.input"], io.BytesIO)


@pytest.mark.parametrize("framing", [("content-length", "50"), ("transfer-encoding", "chunked")])
def test_a_stalled_body_is_answered_408_at_the_deadline_and_the_connection_closed(framing):
    started = time.monotonic()
    _, (status, headers, body) = serve([framing], Protocol([b"Action="], forever=True), timeout=0.3)
    assert (status, body) == (408, b"RequestTimeout")
    assert ("Connection", "close") in headers
    assert 0.25 < time.monotonic() - started < 2


def test_a_trickling_body_is_cut_off_at_the_deadline_not_per_read():
    # Each byte comes well within the deadline; the whole body does not.
    protocol = Protocol([b"A", b"c", b"t", b"i", b"o", b"n", b"="] * 10, pause=0.1)
    _, answer = serve([("content-length", "70")], protocol, timeout=0.35)
    assert answer[0] == 408 and answer[2] == b"RequestTimeout"
    assert 2 <= protocol.read < 10


def test_a_body_broken_off_by_the_client_is_a_parse_error_not_a_truncated_request():
    _, answer = serve([("transfer-encoding", "chunked")], Protocol([b"Action=Enc"], broken=True))
    assert answer[0] == 400 and answer[2] == b"ParseRequestParameterException"
    assert ("Connection", "close") in answer[1]

