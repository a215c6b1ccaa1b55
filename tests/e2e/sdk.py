"""The official SDKs, pointed at a live server (endpoint and protocol are the only changes).

Each client exposes ``call(Action, **Params)`` returning the response body as a dict, and raises
``ApiError(status, code, message)`` from the SDK's own exception, so one test can run through every SDK.
The requests are built and signed by the SDKs themselves; nothing here touches the wire.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass

from alibabacloud_kms20160120 import models as tea_models
from alibabacloud_kms20160120.client import Client as TeaClient
from alibabacloud_tea_openapi.models import Config
from aliyunsdkcore.acs_exception.exceptions import ClientException as LegacyClientException
from aliyunsdkcore.acs_exception.exceptions import ServerException as LegacyServerException
from aliyunsdkcore.client import AcsClient
from darabonba.exceptions import ResponseException
from darabonba.runtime import RuntimeOptions


@dataclass
class ApiError(Exception):
    status: int | None
    code: str
    message: str


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class TeaSdk:
    """``alibabacloud-kms20160120``: V3 ACS3-HMAC-SHA256 by default, V1 with ``signature_algorithm='v2'``."""

    def __init__(self, endpoint: str, access_key_id: str, secret: str, signature_algorithm: str | None = None,
                 ca: str | None = None, read_timeout_s: float = 30):
        """``ca``: speak HTTPS, trusting this CA bundle (as ``make run TLS=1`` tells clients to)."""
        config = Config(access_key_id=access_key_id, access_key_secret=secret, endpoint=endpoint,
                        protocol="https" if ca else "http", read_timeout=int(read_timeout_s * 1000),
                        connect_timeout=5000)
        if signature_algorithm:
            config.signature_algorithm = signature_algorithm
        self.name = f"tea-{signature_algorithm or 'v3'}"
        self.client = TeaClient(config)
        self.runtime = RuntimeOptions(ca=ca)

    def call(self, action: str, **params) -> dict:
        method = getattr(self.client, f"{snake(action)}_with_options")
        request_class = getattr(tea_models, f"{action}Request", None)  # None for actions without parameters
        arguments = () if request_class is None and not params else (request_class().from_map(params),)
        try:
            return method(*arguments, self.runtime).body.to_map()
        except ResponseException as exc:
            raise ApiError(exc.status_code, exc.code, exc.message) from None


class LegacySdk:
    """``aliyun-python-sdk-core`` + ``aliyun-python-sdk-kms``: V1 HMAC-SHA1."""

    name = "legacy"

    def __init__(self, endpoint: str, access_key_id: str, secret: str, timeout_s: float = 30):
        self.endpoint = endpoint
        self.client = AcsClient(access_key_id, secret, "cn-hangzhou", auto_retry=False, timeout=timeout_s)

    def request(self, action: str, **params):
        module = importlib.import_module(f"aliyunsdkkms.request.v20160120.{action}Request")
        request = getattr(module, f"{action}Request")()
        request.set_endpoint(self.endpoint)
        request.set_protocol_type("http")
        for name, value in params.items():
            if isinstance(value, dict | list):
                value = json.dumps(value)
            getattr(request, f"set_{name}")(value)
        return request

    def call(self, action: str, **params) -> dict:
        try:
            return json.loads(self.client.do_action_with_exception(self.request(action, **params)))
        except LegacyServerException as exc:
            raise ApiError(exc.get_http_status(), exc.get_error_code(), exc.get_error_msg()) from None
        except LegacyClientException as exc:
            raise ApiError(None, exc.get_error_code(), exc.get_error_msg()) from None
