"""Input no official SDK would send: malformed, missing, oversized or hostile requests on the raw socket.

Every answer must be a 4xx in the Alibaba JSON shape: never a 5xx, a traceback or an HTML page.
"""

from __future__ import annotations

import http.client
import json
import re

import pytest

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
GOOD = "Action=DescribeKey&Version=2016-01-20"


def send(server, method: str = "POST", target: str = "/", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
            headers["Content-Length"] = str(len(body))
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def alibaba_error(status: int, headers: dict[str, str], body: bytes) -> dict:
    assert 400 <= status < 500, (status, body[:300])
    assert headers["content-type"] == "application/json;charset=utf-8"
    assert headers.get("server", "") == ""  # no banner names the software
    document = json.loads(body)
    assert set(document) == {"RequestId", "HostId", "Code", "Message"}
    assert UUID.match(document["RequestId"])
    assert "Traceback" not in document["Message"]
    return document


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_unsupported_methods(server, method):
    status, headers, body = send(server, method, "/?" + GOOD)
    error = alibaba_error(status, headers, body)
    assert (status, error["Code"]) == (403, "UnsupportedHTTPMethod")


@pytest.mark.parametrize("target", ["/nope", "/index.html", "//", "/%ff", "/?/../etc"])
def test_unknown_paths(server, target):
    status, headers, body = send(server, "GET", target)
    assert alibaba_error(status, headers, body)["Code"] in {"InvalidAction.NotFound", "MissingParameter"}


CASES = [
    # (query string, form body, extra headers, expected code)
    ("", None, {}, "MissingParameter"),
    ("Action=DescribeKey", None, {}, "MissingParameter"),
    ("Action=DescribeKey&Version=2099-01-01", None, {}, "InvalidVersion"),
    ("Action=Nope&Version=2016-01-20", None, {}, "InvalidAction.NotFound"),
    (GOOD, None, {}, "MissingParameter"),  # no signature at all
    (GOOD + "&KeyId=%ff%fe", None, {}, "ParseRequestParameterException"),
    (GOOD + "&KeyId=%C3", None, {}, "ParseRequestParameterException"),
    (GOOD + "&KeyId=a&KeyId=b", None, {}, "InvalidParameter"),
    ("Action=DescribeKey", b"Version=2016-01-20&Action=DescribeKey", {}, "InvalidParameter"),
    (GOOD, b"\xff\xfe=\x00", {}, "ParseRequestParameterException"),
    (GOOD, b"a=" + b"x" * 70_000, {}, "InvalidParameter"),
    (GOOD + "&" + "&".join(f"p{i}=1" for i in range(300)), None, {}, "ParseRequestParameterException"),
    (GOOD, None, {"Authorization": "ACS3-HMAC-SHA256 garbage"}, "IncompleteSignature"),
    (GOOD, None, {"Authorization": "ACS3-HMAC-SM3 Credential=a,SignedHeaders=host,Signature=00"},
     "IncompleteSignature"),
    (GOOD, None, {"Authorization": "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=00"},
     "IllegalTimestamp"),
    (GOOD, None, {"Authorization": "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=00",
                  "x-acs-date": "2024-01-01T00:00:00Z", "x-acs-signature-nonce": "n",
                  "x-acs-content-sha256": "00"}, "IncompleteSignature"),
    (GOOD, None, {"Authorization": "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=host,Signature=00",
                  "x-acs-security-token": "sts"}, "InvalidSecurityToken.NotSupported"),
    (GOOD + "&Signature=abc&SignatureMethod=HMAC-MD5&SignatureVersion=1.0", None, {}, "IncompleteSignature"),
    (GOOD + "&Signature=abc&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&AccessKeyId=x&Timestamp=yesterday",
     None, {}, "IllegalTimestamp"),
    (GOOD + "&Signature=abc&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&AccessKeyId=x"
            "&Timestamp=2024-13-45T00:00:00Z", None, {}, "IllegalTimestamp"),
    (GOOD + "&Signature=abc&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&AccessKeyId=x"
            "&Timestamp=2024-01-01T00:00:00Z", None, {}, "MissingParameter"),
    (GOOD + "&Signature=abc&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&AccessKeyId=LTAInobody"
            "&Timestamp=2024-01-01T00:00:00Z&SignatureNonce=n", None, {}, "InvalidAccessKeyId.NotFound"),
    (GOOD + "&Signature=abc&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&AccessKeyId=x&SecurityToken=t",
     None, {}, "InvalidSecurityToken.NotSupported"),
]


@pytest.mark.parametrize("query, body, headers, code", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_malformed_requests(server, query, body, headers, code):
    status, response_headers, payload = send(server, "POST", "/?" + query if query else "/", body, headers)
    assert alibaba_error(status, response_headers, payload)["Code"] == code


def test_overlong_url_is_refused_by_the_http_server(server):
    """Granian refuses a request target over about 64 KB before the application sees it: a bare 414."""
    status, headers, body = send(server, "POST", "/?" + GOOD + "&k=" + "x" * 70_000)
    assert (status, body) == (414, b"")
    status, headers, body = send(server, "POST", "/?" + GOOD + "&k=" + "x" * 60_000)  # the app's own limit
    assert alibaba_error(status, headers, body)["Code"] == "MissingParameter"


def test_get_is_accepted_like_post(server):
    status, headers, body = send(server, "GET", "/?" + GOOD)
    assert alibaba_error(status, headers, body)["Code"] == "MissingParameter"


def test_no_server_banner_and_health(server):
    status, headers, body = send(server, "GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers.get("server", "") == ""
    status, headers, body = send(server, "GET", "/readyz")
    assert status == 200 and json.loads(body) == {"hsm": True, "store": True, "nonces": True}
