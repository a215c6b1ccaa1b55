"""Response rendering: compact JSON, XML for Format=XML, errors always JSON."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import flask
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hsmkms.api import render
from hsmkms.api.render import JSON_TYPE, XML_TYPE
from hsmkms.errors import (
    InternalFailure,
    KeyStateRejected,
    MissingParameter,
    SignatureDoesNotMatch,
    StateModifiedFailed,
)
from tests.equivalence import EQUIVALENCE

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


@pytest.fixture(autouse=True)
def request_context():
    with flask.Flask("t").test_request_context() as context:
        yield context


def success(*args, **kwargs) -> flask.Response:
    return render.flask_response(render.success(*args, **kwargs))


def error(*args, **kwargs) -> flask.Response:
    return render.flask_response(render.error(*args, **kwargs))


def test_reply_through_wsgi_names_no_server():
    started = {}
    body = render.success({"KeyId": "k"}, "r", "DescribeKey").start(
        lambda status, headers: started.update(status=status, headers=dict(headers)))
    assert started["status"] == "200 OK"
    assert started["headers"] == {"Content-Type": JSON_TYPE, "Content-Length": str(len(body[0])), "Server": ""}
    assert b"".join(body) == b'{"KeyId":"k","RequestId":"r"}'
    render.error(MissingParameter("KeyId"), "r", "h").start(
        lambda status, headers: started.update(status=status))
    assert started["status"] == "400 Bad Request"


def test_xml_replaces_characters_xml_cannot_carry():
    text = success({"Description": "a\x01b\x00c\ufffe"}, "r", "DescribeKey", xml=True).get_data(as_text=True)
    assert ET.fromstring(text).findtext("Description") == "a\ufffdb\ufffdc\ufffd"


def test_success_json_is_compact_with_request_id():
    response = success({"KeyId": "k", "Count": 2}, "req-1", "DescribeKey")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json;charset=utf-8"
    assert response.headers["Content-Type"] == JSON_TYPE
    text = response.get_data(as_text=True)
    assert text == '{"KeyId":"k","Count":2,"RequestId":"req-1"}'
    assert json.loads(text) == {"KeyId": "k", "Count": 2, "RequestId": "req-1"}


def test_success_json_nested_is_compact():
    body = {"KeyMetadata": {"KeyId": "k", "Tags": [1, 2]}}
    text = success(body, "r", "DescribeKey").get_data(as_text=True)
    assert ": " not in text and ", " not in text
    assert text == '{"KeyMetadata":{"KeyId":"k","Tags":[1,2]},"RequestId":"r"}'


def test_success_json_keeps_utf8():
    response = success({"Description": "杭州é"}, "r", "DescribeKey")
    assert response.get_data() == '{"Description":"杭州é","RequestId":"r"}'.encode("utf-8")


def test_success_does_not_mutate_body():
    body = {"KeyId": "k"}
    success(body, "r", "DescribeKey")
    assert body == {"KeyId": "k"}


def test_success_request_id_wins():
    text = success({"RequestId": "spoofed"}, "real", "X").get_data(as_text=True)
    assert json.loads(text) == {"RequestId": "real"}


def test_xml_nested_doubled_list():
    body = {"Keys": {"Key": [{"KeyId": "a"}, {"KeyId": "b"}]}}
    response = success(body, "rid", "ListKeys", xml=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == XML_TYPE == "application/xml;charset=utf-8"
    text = response.get_data(as_text=True)
    assert text == (
        XML_DECLARATION
        + "<ListKeysResponse>"
        + "<Keys><Key><KeyId>a</KeyId></Key><Key><KeyId>b</KeyId></Key></Keys>"
        + "<RequestId>rid</RequestId>"
        + "</ListKeysResponse>"
    )
    root = ET.fromstring(response.get_data())
    assert root.tag == "ListKeysResponse"
    assert [k.findtext("KeyId") for k in root.find("Keys").findall("Key")] == ["a", "b"]


def test_xml_empty_list_renders_nothing():
    text = success({"Keys": {"Key": []}, "TotalCount": 0}, "r", "ListKeys", xml=True).get_data(as_text=True)
    assert "<Keys></Keys><TotalCount>0</TotalCount>" in text


def test_xml_escaping():
    text = success({"Description": "<a&b>"}, "r", "DescribeKey", xml=True).get_data(as_text=True)
    assert "<Description>&lt;a&amp;b&gt;</Description>" in text
    assert "<a&b>" not in text
    root = ET.fromstring(text.encode("utf-8"))
    assert root.findtext("Description") == "<a&b>"


def test_xml_booleans_and_numbers():
    body = {"AutomaticRotation": True, "Other": False, "TotalCount": 5}
    text = success(body, "r", "DescribeKey", xml=True).get_data(as_text=True)
    assert "<AutomaticRotation>true</AutomaticRotation>" in text
    assert "<Other>false</Other>" in text
    assert "<TotalCount>5</TotalCount>" in text


def test_xml_utf8():
    response = success({"Description": "杭州"}, "r", "DescribeKey", xml=True)
    assert "<Description>杭州</Description>".encode("utf-8") in response.get_data()


@pytest.mark.parametrize(
    ("err", "status", "code"),
    [
        (KeyStateRejected("Disabled"), 409, "Rejected.Disabled"),
        (StateModifiedFailed(), 409, "Rejected.StateModifiedFailed"),
        (MissingParameter("KeyId"), 400, "MissingParameter"),
        (InternalFailure(), 500, "InternalFailure"),
    ],
)
def test_error_body(err, status, code):
    response = error(err, "req-9", "kms.example")
    assert response.status_code == status
    assert response.headers["Content-Type"] == JSON_TYPE
    body = json.loads(response.get_data(as_text=True))
    assert list(body) == ["RequestId", "HostId", "Code", "Message"]
    assert body == {"RequestId": "req-9", "HostId": "kms.example", "Code": code, "Message": err.message}


def test_error_json_is_compact_and_keeps_colon_message():
    err = SignatureDoesNotMatch("POST&%2F&a%3Db")
    text = error(err, "r", "h").get_data(as_text=True)
    assert ": " not in text.replace(err.message, "")
    assert json.loads(text)["Message"].split(":", 1)[1] == "POST&%2F&a%3Db"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@EQUIVALENCE
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
@example({"Plaintext": "\ud800 lone surrogate", "n": float("nan"), "é": ["\x00\"\\"]})
def test_json_bodies_are_what_the_json_module_makes(body):
    """The C encoder made once gives the bytes json.JSONEncoder.encode gives (lone surrogates replaced)."""
    expected = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode(body).encode("utf-8", "replace")
    assert render.json_reply(body).body == expected


def test_json_without_the_c_encoder_is_the_same(monkeypatch):
    body = {"KeyId": "k", "Nested": {"List": [1, 2.5, None, True]}, "Text": "é\ud800"}
    expected = render.json_reply(body).body
    monkeypatch.setattr(render, "_COMPACT_C", None)
    assert render.json_reply(body).body == expected
