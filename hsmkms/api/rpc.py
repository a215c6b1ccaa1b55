"""The RPC endpoint: ``GET /`` and ``POST /``, one request in, one Alibaba-shaped response out.

Path of a request: parse and merge parameters -> Action and Version -> authenticate -> handler from the
ACTIONS registry -> render.  Every failure becomes the documented error body; unexpected exceptions are
logged with the request id and answered ``InternalFailure`` without details.
"""

from __future__ import annotations

import logging
import uuid

from flask import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from hsmkms.api import render
from hsmkms.api.actions import ACTIONS, Call, Services
from hsmkms.api.auth import Authenticator, SignedRequest
from hsmkms.api.params import Params, merge, parse_pairs
from hsmkms.errors import (
    InternalFailure,
    InvalidActionNotFound,
    InvalidVersion,
    KmsError,
    MissingParameter,
    RequestTooLarge,
    ServiceUnavailable,
)
from hsmkms.hsm.backend import HsmUnavailable
from hsmkms.service.watch import StoreWatch
from hsmkms.store.base import StoreError

log = logging.getLogger(__name__)

API_VERSION = "2016-01-20"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_QUERY_BYTES = 64 * 1024


def host_id() -> str:
    return request.host[:255] if request.host else "hsmkms"


class RpcEndpoint:
    def __init__(self, services: Services, authenticator: Authenticator, watch: StoreWatch):
        self.services = services
        self.authenticator = authenticator
        self.watch = watch

    def __call__(self) -> Response:
        request_id = str(uuid.uuid4())
        try:
            return self._handle(request_id)
        except KmsError as err:
            return render.error(err, request_id, host_id())
        except (HsmUnavailable, StoreError) as exc:
            log.error("request %s: %s: %s", request_id, type(exc).__name__, exc)
            return render.error(ServiceUnavailable(), request_id, host_id())
        except Exception:
            log.exception("request %s failed", request_id)
            return render.error(InternalFailure(), request_id, host_id())

    def _handle(self, request_id: str) -> Response:
        query_string = request.environ.get("QUERY_STRING", "").encode("latin-1")
        if len(query_string) > MAX_QUERY_BYTES:
            raise RequestTooLarge("query string", MAX_QUERY_BYTES)
        body = self._body()
        query = parse_pairs(query_string)
        form = parse_pairs(body) if request.mimetype == FORM_TYPE else []
        values = merge(query, form)
        headers = {name.lower(): value for name, value in request.headers.items()}

        action = values.get("Action") or headers.get("x-acs-action") or ""
        if not action:
            raise MissingParameter("Action")
        version = values.get("Version") or headers.get("x-acs-version") or ""
        if not version:
            raise MissingParameter("Version")
        if version != API_VERSION:
            raise InvalidVersion()
        handler = ACTIONS.get(action)
        if handler is None:
            raise InvalidActionNotFound()

        self.watch.refresh()
        access_key_id = self.authenticator.authenticate(
            SignedRequest(request.method, request.path, query, values, headers, body)
        )
        result = handler(Call(self.services, Params(values), access_key_id))
        return render.success(result, request_id, action, xml=values.get("Format", "").upper() == "XML")

    @staticmethod
    def _body() -> bytes:
        try:
            return request.get_data(cache=True)
        except RequestEntityTooLarge:
            raise RequestTooLarge("body", request.max_content_length or 0) from None
