"""The wire under the fuzzers: signing arbitrary parameters, sending anything, and judging every answer.

The official SDKs cannot send malformed values, so the fuzzers sign requests themselves with the server's own
signature builders (``hsmkms.api.auth``): a correctly signed request gets past authentication and reaches
the action handler with whatever parameters hypothesis made up.  Requests go out through ``http.client``,
or through a raw socket for bytes ``http.client`` refuses to send.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import re
import socket
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from hsmkms.api.auth import (
    V3_ALGORITHM,
    v1_signature,
    v1_string_to_sign,
    v3_canonical_request,
    v3_signature,
    v3_string_to_sign,
)

API_VERSION = "2016-01-20"
FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json;charset=utf-8"
XML_TYPE = "application/xml;charset=utf-8"
ERROR_KEYS = {"RequestId", "HostId", "Code", "Message"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
TIMEOUT_S = 30
SERVER_REFUSAL = "(refused by the HTTP server)"

_nonces = itertools.count()
# (status, content type, reason) of every answer the HTTP server (granian) gave itself, reported at the end.
SERVER_ANSWERS: Counter[tuple[int, str, str]] = Counter()


def pct(text: str) -> str:
    """Percent-encode as both signature schemes do (and so that ``parse_qsl`` gives the text back)."""
    return quote(text, safe="-_.~")


def encode_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{pct(k)}={pct(v)}" for k, v in pairs)


def utc_timestamp(offset_s: float = 0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_s))


def nonce() -> str:
    """Unique across the run and across processes (a nonce is accepted once, by every worker)."""
    return f"fuzz-{uuid.uuid4().hex}-{next(_nonces)}"


# --- answers ---------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    request: str = ""  # what was sent, for failure messages

    def json(self) -> dict:
        return json.loads(self.body)

    def describe(self) -> str:
        return f"{self.request}\n-> {self.status} {self.headers}\n{self.body[:600]!r}"


def check_app_reply(reply: Reply, *, xml: bool = False, head: bool = False) -> dict | None:
    """An answer from the application: never a 5xx; errors in the Alibaba shape; successes JSON (or XML).

    Returns the decoded error document (None for a success or a HEAD answer).
    """
    assert reply.status < 500, reply.describe()
    assert reply.headers.get("content-type") in (JSON_TYPE, XML_TYPE), reply.describe()
    if head:
        assert reply.body == b"", reply.describe()
        return None
    if reply.status >= 400:
        return check_alibaba_error(reply)
    assert reply.status == 200, reply.describe()
    if xml:
        assert reply.headers["content-type"] == XML_TYPE, reply.describe()
        try:
            root = ElementTree.fromstring(reply.body)
        except ElementTree.ParseError as exc:
            raise AssertionError(f"success body is not well-formed XML ({exc}):\n{reply.describe()}") from None
        assert root.tag.endswith("Response"), reply.describe()
        request_id = root.findtext("RequestId")
    else:
        assert reply.headers["content-type"] == JSON_TYPE, reply.describe()
        document = _json(reply)
        assert isinstance(document, dict), reply.describe()
        request_id = document.get("RequestId")
    assert isinstance(request_id, str) and UUID.match(request_id), reply.describe()
    return None


def server_answered(reply: Reply) -> bool:
    """The HTTP server refused the request before the application saw it: every answer of the application
    carries a Server header (with an empty value); granian's own refusals have none."""
    return "server" not in reply.headers


def check_reply(reply: Reply, *, xml: bool = False, head: bool = False) -> dict | None:
    """Any answer: the HTTP server's own must be a 4xx (recorded for the report), the application's as above.

    Returns None for a success, else the error document (for its refusals, Code is SERVER_REFUSAL).
    """
    if server_answered(reply):
        assert 400 <= reply.status < 500, reply.describe()
        assert b"<html" not in reply.body.lower(), reply.describe()  # never an HTML page
        reason = reply.body.decode("latin-1")[:60]
        SERVER_ANSWERS[(reply.status, reply.headers.get("content-type", ""), reason)] += 1
        return {"Code": SERVER_REFUSAL, "Message": reason}
    return check_app_reply(reply, xml=xml, head=head)


def check_alibaba_error(reply: Reply) -> dict:
    assert 400 <= reply.status < 500, reply.describe()
    assert reply.headers.get("content-type") == JSON_TYPE, reply.describe()
    document = _json(reply)
    assert isinstance(document, dict) and set(document) == ERROR_KEYS, reply.describe()
    assert all(isinstance(value, str) for value in document.values()), reply.describe()
    assert UUID.match(document["RequestId"]), reply.describe()
    assert document["Code"], reply.describe()
    assert "Traceback" not in document["Message"], reply.describe()
    return document


def _json(reply: Reply):
    try:
        return json.loads(reply.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AssertionError(f"body is not JSON:\n{reply.describe()}") from None


# --- sending -----------------------------------------------------------------------------------------------


def send(port: int, method: str, target: str, body: bytes | None = None,
         headers: Sequence[tuple[str, str]] | Mapping[str, str] = ()) -> Reply:
    """One request through ``http.client``; headers are sent exactly as given (in order, duplicates kept).

    http.client adds ``Host`` unless the headers hold one.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if any(re.search(r"[\r\n]", k + v) for k, v in pairs) or re.search(r"[\x00-\x20\x7f]", target):
        # http.client refuses these; the raw socket sends them as they are.
        raw_headers = [(k.encode("latin-1"), latin1(v).encode("latin-1")) for k, v in pairs]
        return send_raw(port, raw_request(method.encode("latin-1"), target.encode("latin-1"), raw_headers,
                                          body or b"", port=port), head=method == "HEAD")
    has_host = any(k.lower() == "host" for k, _ in pairs)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        connection.putrequest(method, target, skip_host=has_host, skip_accept_encoding=True)
        if body is not None and not any(k.lower() == "content-length" for k, _ in pairs):
            pairs.append(("Content-Length", str(len(body))))
        for name, value in pairs:
            connection.putheader(name, latin1(value))
        try:
            connection.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            # The server answered the head (a request line too long, say) and closed before taking the body:
            # send it all again on a raw socket, which reads that answer.
            raw_headers = [(k.encode("latin-1"), latin1(v).encode("latin-1")) for k, v in pairs]
            return send_raw(port, raw_request(method.encode("latin-1"), target.encode("latin-1"), raw_headers,
                                              body or b"", port=port), head=method == "HEAD")
        response = connection.getresponse()
        data = b"" if method == "HEAD" else response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                     f"{method} {target[:300]} headers={[(k, v[:100]) for k, v in pairs]} "
                     f"body={(body or b'')[:300]!r}")
    finally:
        connection.close()


def latin1(text: str) -> str:
    """A header value as the server will read it: text beyond Latin-1 goes out as its UTF-8 bytes, which a WSGI
    server decodes as Latin-1 (so sign what this returns)."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8").decode("latin-1")


CLIENT_GONE = 499  # the status recorded when a client that closed its sending side got no answer


def send_raw(port: int, data: bytes, *, half_close: bool = False, head: bool = False) -> Reply:
    """Bytes on a socket, for what ``http.client`` refuses to send; parses the one response that comes back.

    ``half_close``: shut the sending side after the bytes, for requests that end early (a truncated body),
    so that the server is not left waiting for the rest.  The HTTP server takes that as the client giving up
    and may send nothing: that is recorded as CLIENT_GONE (a refusal, not an application answer).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
        if half_close:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if _complete(received, head):
                    break
        except ConnectionResetError:
            pass
    if half_close and not received:
        return Reply(CLIENT_GONE, {}, b"", f"raw {data[:300]!r}")
    reply = parse_response(bytes(received), f"raw {data[:300]!r}")
    if head:
        reply.body = b""
    return reply


def _complete(received: bytearray, head_request: bool = False) -> bool:
    head, sep, rest = bytes(received).partition(b"\r\n\r\n")
    if not sep:
        return False
    if head_request:
        return True
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return match is not None and len(rest) >= int(match.group(1))


def parse_response(raw: bytes, request: str = "") -> Reply:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    match = re.match(rb"HTTP/\d\.\d (\d{3})", lines[0]) if lines else None
    if match is None:
        raise AssertionError(f"no HTTP response (connection closed without an answer?): {raw[:300]!r}\n{request}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    length = headers.get("content-length")
    body = rest[: int(length)] if length and length.isdigit() else rest
    return Reply(int(match.group(1)), headers, body, request)


def raw_request(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes = b"",
                version: bytes = b"HTTP/1.1", port: int | None = None) -> bytes:
    lines = [method + b" " + target + b" " + version]
    names = {name.lower() for name, _ in headers}
    if b"host" not in names and port is not None:
        lines.append(b"Host: 127.0.0.1:%d" % port)
    lines += [name + b": " + value for name, value in headers]
    if body and b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- signing -----------------------------------------------------------------------------------------------


@dataclass
class Signer:
    """Correctly signed requests with arbitrary parameters, V1 (HMAC-SHA1) or V3 (ACS3-HMAC-SHA256)."""

    port: int
    access_key_id: str
    secret: str
    host: str = field(init=False)

    def __post_init__(self) -> None:
        self.host = f"127.0.0.1:{self.port}"

    # V1: every parameter, query and form body merged, is signed.

    def v1_common(self, *, timestamp: str | None = None, signature_nonce: str | None = None) -> dict[str, str]:
        return {
            "Format": "JSON",
            "AccessKeyId": self.access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": signature_nonce if signature_nonce is not None else nonce(),
            "Timestamp": timestamp if timestamp is not None else utc_timestamp(),
        }

    def v1_sign(self, method: str, params: Mapping[str, str]) -> str:
        return v1_signature(self.secret, v1_string_to_sign(method, params))

    def v1_params(self, method: str, params: Mapping[str, str], **common) -> dict[str, str]:
        """``params`` plus the common parameters (``params`` win), signed."""
        signed = {**self.v1_common(**common), **params}
        signed["Signature"] = self.v1_sign(method, signed)
        return signed

    def v1_request(self, method: str, params: Mapping[str, str], *, in_body: Iterable[str] | None = (),
                   **common) -> tuple[str, bytes | None, list[tuple[str, str]]]:
        """(target, body, headers): the names in ``in_body`` (every name for None) go in a form body, the rest
        in the query."""
        signed = self.v1_params(method, params, **common)
        in_body = set(signed) if in_body is None else set(in_body)
        query = encode_pairs((k, v) for k, v in signed.items() if k not in in_body)
        target = "/?" + query if query else "/"
        if not in_body:
            return target, None, []
        body = encode_pairs((k, v) for k, v in signed.items() if k in in_body).encode("ascii")
        return target, body, [("Content-Type", FORM_TYPE)]

    # V3: the URL query and the x-acs-* headers and host are signed; the body through its SHA-256.

    def v3_headers(self, method: str, query: Sequence[tuple[str, str]], body: bytes = b"",
                   headers: Mapping[str, str] | None = None, *, date: str | None = None,
                   signature_nonce: str | None = None, path: str = "/") -> dict[str, str]:
        """Headers (lower-case names) for a V3 request, Authorization included."""
        signed = {
            "host": self.host,
            "x-acs-date": date if date is not None else utc_timestamp(),
            "x-acs-signature-nonce": signature_nonce if signature_nonce is not None else nonce(),
            "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
        }
        signed |= {k.lower(): v for k, v in (headers or {}).items()}
        signed = {k: latin1(v) for k, v in signed.items()}
        names = sorted(n for n in signed if n == "host" or n.startswith("x-acs-") or n == "content-type")
        canonical = v3_canonical_request(method, path, query, signed, names, signed["x-acs-content-sha256"])
        signature = v3_signature(self.secret, v3_string_to_sign(canonical))
        signed["authorization"] = (f"{V3_ALGORITHM} Credential={self.access_key_id},"
                                   f"SignedHeaders={';'.join(names)},Signature={signature}")
        return signed

    def v3_request(self, method: str, params: Mapping[str, str], *, action: str | None = None,
                   in_body: Iterable[str] = (), **options) -> tuple[str, bytes | None, list[tuple[str, str]]]:
        """(target, body, headers); Action and Version go in x-acs-* headers when ``action`` is given (the Tea
        SDK's way), otherwise they are whatever ``params`` holds."""
        in_body = set(in_body)
        query = [(k, v) for k, v in params.items() if k not in in_body]
        form = [(k, v) for k, v in params.items() if k in in_body]
        body = encode_pairs(form).encode("ascii") if form else b""
        extra = {"x-acs-action": action, "x-acs-version": API_VERSION} if action else {}
        if form:
            extra["content-type"] = FORM_TYPE
        headers = self.v3_headers(method, query, body, extra, **options)
        target = "/?" + encode_pairs(query) if query else "/"
        # http.client adds Host itself; send it from the signed headers instead.
        return target, body if form else None, list(headers.items())

    def call(self, action: str, **params: str) -> dict:
        """A plain, valid V1 call; raises on anything but 200 (for fixtures)."""
        target, _, _ = self.v1_request("GET", {"Action": action, "Version": API_VERSION, **params})
        reply = send(self.port, "GET", target)
        assert reply.status == 200, reply.describe()
        return reply.json()


def send_action(signer: Signer, action: str, values: dict[str, str], mode: str,
                in_body: frozenset[str] = frozenset()) -> tuple[Reply, bool]:
    """Send ``values`` for ``action`` the way ``mode`` says; returns the answer and whether XML was asked for."""
    if mode.startswith("v1"):
        method = "GET" if mode == "v1-get" else "POST"
        params = {**values, "Action": action, "Version": API_VERSION}
        body_names = None if mode == "v1-all-form" else (in_body if mode == "v1-form" else ())
        target, body, headers = signer.v1_request(method, params, in_body=body_names)
        xml = values.get("Format", "JSON").upper() == "XML"
    else:
        method = "GET" if mode == "v3-get" else "POST"
        if mode == "v3-query-action":
            target, body, headers = signer.v3_request(method, {**values, "Action": action, "Version": API_VERSION})
        else:
            target, body, headers = signer.v3_request(method, values, action=action,
                                                      in_body=in_body if mode == "v3-form" else ())
        xml = values.get("Format", "").upper() == "XML"
    return send(signer.port, method, target, body, headers), xml
