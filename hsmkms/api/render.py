"""Response bodies: JSON (default) or XML for success, always JSON in the Alibaba shape for errors.

JSON is compact ``application/json;charset=utf-8``.  XML (``Format=XML``) is rooted at
``<{Action}Response>``; lists render as repeated elements (``{"Keys":{"Key":[a,b]}}`` becomes
``<Keys><Key>a</Key><Key>b</Key></Keys>``).  Errors stay JSON whatever was asked: every official client
parses JSON errors, and the Tea SDK parses XML errors only under a content type no gateway sends.

A reply is a plain (status, content type, body); ``start`` sends it through WSGI, ``flask_response`` makes
a Flask response of it for the routes Flask serves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from xml.sax.saxutils import escape

from flask import Response

from hsmkms.errors import KmsError

JSON_TYPE = "application/json;charset=utf-8"
XML_TYPE = "application/xml;charset=utf-8"
# Replaces the HTTP server's banner (granian names itself otherwise): a response names no software.
SERVER_HEADER = ("Server", "")
# Characters XML 1.0 cannot carry, escaped or not; shown as U+FFFD in XML (JSON carries them as they are).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# The C encoder JSONEncoder.encode builds at every call (with Python around it, half the cost of a reply), made
# once; None where the interpreter has no _json accelerator, and _COMPACT then encodes.
_COMPACT_C = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, _COMPACT.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


@dataclass(slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def start(self, start_response: Callable) -> list[bytes]:
        start_response(_STATUS_LINES[self.status], [
            ("Content-Type", self.content_type), ("Content-Length", str(len(self.body))), SERVER_HEADER,
        ])
        return [self.body]


def success(body: dict, request_id: str, action: str, xml: bool = False) -> Reply:
    body = {**body, "RequestId": request_id}
    if xml:
        payload = f'<?xml version="1.0" encoding="UTF-8"?>{_xml_element(action + "Response", body)}'
        return Reply(200, XML_TYPE, payload.encode("utf-8"))
    return Reply(200, JSON_TYPE, _json(body))


def error(err: KmsError, request_id: str, host_id: str) -> Reply:
    body = {"RequestId": request_id, "HostId": host_id, "Code": err.code, "Message": err.message}
    return Reply(err.status, JSON_TYPE, _json(body))


def json_reply(body: dict, status: int = 200) -> Reply:
    return Reply(status, JSON_TYPE, _json(body))


def flask_response(reply: Reply) -> Response:
    response = Response(reply.body, reply.status, content_type=reply.content_type)
    response.headers[SERVER_HEADER[0]] = SERVER_HEADER[1]
    return response


def _json(body: dict) -> bytes:
    text = "".join(_COMPACT_C(body, 0)) if _COMPACT_C is not None else _COMPACT.encode(body)
    return text.encode("utf-8", "replace")


def _xml_element(name: str, value) -> str:
    if isinstance(value, dict):
        return f"<{name}>{''.join(_xml_element(k, v) for k, v in value.items())}</{name}>"
    if isinstance(value, list):
        return "".join(_xml_element(name, item) for item in value)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{escape(_NOT_XML.sub(chr(0xFFFD), str(value)))}</{name}>"
