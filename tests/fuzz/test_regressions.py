"""Inputs the fuzzers found that the server answered with a 5xx (or with a body that is not what it claims).

Each is kept as a plain test with the exact request, so that it stays fixed whatever the fuzzers draw.  The
expected answers are what the README documents for bad input: a 4xx in the Alibaba JSON shape (for the
parameter errors, InvalidParameter; for a signature that does not match, SignatureDoesNotMatch).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest

from tests.fuzz.wire import (
    API_VERSION,
    FORM_TYPE,
    Signer,
    check_alibaba_error,
    check_app_reply,
    check_reply,
    encode_pairs,
    raw_request,
    send,
    send_action,
    send_raw,
)
from tests.fuzz.world import World

DEEP_LIST = "[" * 1000 + "]" * 1000


def throwaway_key(signer: Signer) -> str:
    return signer.call("CreateKey", Description="fuzz regression")["KeyMetadata"]["KeyId"]


@pytest.mark.parametrize("filters", [
    '[{"Key":[],"Values":["x"]}]',  # an unhashable Key: TypeError
    '[{"Key":{},"Values":["x"]}]',
    DEEP_LIST,  # RecursionError in json.loads
    '[{"Key":"AliasName","Values":["\\ud800"]}]',  # a lone surrogate reaches SQLite: UnicodeEncodeError
    '[{"Key":"KeyState","Values":["\\udfff"]}]',
], ids=["list-key", "object-key", "deep", "surrogate-alias", "surrogate-state"])
@pytest.mark.parametrize("mode", ["v1-get", "v3"])
def test_list_keys_filters(signer: Signer, filters: str, mode: str) -> None:
    reply, _ = send_action(signer, "ListKeys", {"Filters": filters}, mode)
    assert check_alibaba_error(reply)["Code"] == "InvalidParameter"


@pytest.mark.parametrize("action, name, value", [
    ("UntagResource", "TagKeys", '["\\ud800"]'),  # surrogate reaches SQLite
    ("UntagResource", "TagKeys", DEEP_LIST),
    ("TagResource", "Tags", DEEP_LIST),
    ("TagResource", "Tags", '[{"TagKey":"k","TagValue":"v"}' + "," + '{"TagKey":"\\udc80"}]'),
    ("CreateKey", "Tags", DEEP_LIST),
    ("CreateKey", "Policy", DEEP_LIST),
], ids=["untag-surrogate", "untag-deep", "tag-deep", "tag-surrogate", "create-tags-deep", "create-policy-deep"])
def test_json_parameters(signer: Signer, action: str, name: str, value: str) -> None:
    params = {name: value}
    if action != "CreateKey":
        params["KeyId"] = throwaway_key(signer)
    reply, _ = send_action(signer, action, params, "v1-get")
    assert check_alibaba_error(reply)["Code"] == "InvalidParameter"


@pytest.mark.parametrize("signature", ["\u00e9", "abc\u00e9==", "\U0001f600"])
def test_v1_signature_with_non_ascii_text(signer: Signer, world: World, signature: str) -> None:
    """hmac.compare_digest refuses non-ASCII str: TypeError, 500."""
    signed = signer.v1_params("GET", {"Action": "DescribeKey", "Version": API_VERSION,
                                      "KeyId": world.keys["enabled"].key_id})
    signed["Signature"] = signature
    reply = send(signer.port, "GET", "/?" + encode_pairs(signed.items()))
    assert check_alibaba_error(reply)["Code"] == "SignatureDoesNotMatch"


@pytest.mark.parametrize("header", ["authorization", "x-acs-content-sha256"])
def test_v3_header_with_non_ascii_text(signer: Signer, world: World, header: str) -> None:
    query = [("KeyId", world.keys["enabled"].key_id)]
    extra = {"x-acs-action": "DescribeKey", "x-acs-version": API_VERSION}
    if header == "x-acs-content-sha256":
        extra[header] = "\u00e9" * 64  # signed as it is: only the comparison with the body's hash fails
    headers = signer.v3_headers("POST", query, b"", extra)
    if header == "authorization":
        headers[header] = headers[header][:-1] + "\u00e9"
    reply = send(signer.port, "POST", "/?" + encode_pairs(query), None, list(headers.items()))
    # Either the signature check refuses it, or -- granian passing on no header value that is not visible
    # ASCII -- the header is missing: a clear 400 both ways, where a 500 once was.
    assert check_alibaba_error(reply)["Code"] in {"SignatureDoesNotMatch", "MissingParameter"}


@pytest.mark.parametrize("body", [
    b"",  # chunked, and the client stops before the last chunk: werkzeug ClientDisconnected
    b"5\r\nKeyId",  # truncated inside a chunk
    b"zz\r\nKeyId\r\n0\r\n\r\n",  # not a chunk size
    b"-1\r\n\r\n",
], ids=["no-chunks", "truncated", "bad-size", "negative-size"])
def test_broken_chunked_bodies(fuzz_server, body: bytes) -> None:
    request = raw_request(b"POST", b"/?Action=DescribeKey&Version=2016-01-20",
                          [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", FORM_TYPE.encode())], body,
                          port=fuzz_server.port)
    check_reply(send_raw(fuzz_server.port, request, half_close=True))


@pytest.mark.parametrize("description", ["a\x01b", "\x00", "\x1b[0m", "\ufffe", "\uffff"])
def test_xml_answers_are_well_formed(signer: Signer, description: str) -> None:
    """A Description with characters XML 1.0 cannot carry, read back with Format=XML."""
    reply, xml = send_action(signer, "CreateKey", {"Description": description, "Format": "XML"}, "v1-get")
    check_app_reply(reply, xml=xml)
    if reply.status == 200:
        ElementTree.fromstring(reply.body)


@pytest.mark.parametrize("coding", [b"", b"br", b"foo", b","])
def test_unknown_transfer_coding(fuzz_server, coding: bytes) -> None:
    """A transfer coding the HTTP server does not know: a 4xx, not gunicorn's former 501 HTML page."""
    request = raw_request(b"GET", b"/?Action=DescribeKey&Version=2016-01-20", [(b"Transfer-Encoding", coding)],
                          port=fuzz_server.port)
    check_reply(send_raw(fuzz_server.port, request))
