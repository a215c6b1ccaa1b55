"""Response bodies: JSON (default) or XML for success, always JSON in the Alibaba shape for errors.

JSON is compact ``application/json;charset=utf-8``.  XML (``Format=XML``) is rooted at
``<{Action}Response>``; lists render as repeated elements (``{"Keys":{"Key":[a,b]}}`` becomes
``<Keys><Key>a</Key><Key>b</Key></Keys>``).  Errors stay JSON whatever was asked: every official client
parses JSON errors, and the Tea SDK parses XML errors only under a content type no gateway sends.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import escape

from flask import Response

from hsmkms.errors import KmsError

JSON_TYPE = "application/json;charset=utf-8"
XML_TYPE = "application/xml;charset=utf-8"


def success(body: dict, request_id: str, action: str, xml: bool = False) -> Response:
    body = {**body, "RequestId": request_id}
    if xml:
        payload = f'<?xml version="1.0" encoding="UTF-8"?>{_xml_element(action + "Response", body)}'
        return Response(payload, 200, content_type=XML_TYPE)
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), 200, content_type=JSON_TYPE)


def error(err: KmsError, request_id: str, host_id: str) -> Response:
    body = {"RequestId": request_id, "HostId": host_id, "Code": err.code, "Message": err.message}
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), err.status,
                    content_type=JSON_TYPE)


def _xml_element(name: str, value) -> str:
    if isinstance(value, dict):
        return f"<{name}>{''.join(_xml_element(k, v) for k, v in value.items())}</{name}>"
    if isinstance(value, list):
        return "".join(_xml_element(name, item) for item in value)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{escape(str(value))}</{name}>"
