"""The RPC endpoint: ``GET /`` and ``POST /``, one request in, one Alibaba-shaped response out.

Path of a request: parse and merge parameters -> Action and Version -> authenticate -> authorize (what the
action touches, against the access key's policy) -> handler from the ACTIONS registry -> render -> one
audit record.  Every failure becomes the documented error body; unexpected exceptions are logged with the
request id and answered ``InternalFailure`` without details.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass

from flask import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from hsmkms.api import render
from hsmkms.api.actions import ACTIONS, Call, Services
from hsmkms.api.auth import Authenticator, SignedRequest
from hsmkms.api.authorize import authorize
from hsmkms.api.params import Params, merge, parse_pairs
from hsmkms.audit import AuditLog, AuditRecord, context_digest
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
from hsmkms.metrics import Metrics
from hsmkms.service.context import canonical_aad
from hsmkms.service.watch import StoreWatch
from hsmkms.store.base import StoreError

log = logging.getLogger(__name__)

API_VERSION = "2016-01-20"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_QUERY_BYTES = 64 * 1024
_V3_CREDENTIAL = re.compile(r"Credential=([^,\s]*)")


def host_id() -> str:
    return request.host[:255] if request.host else "hsmkms"


@dataclass
class Trail:
    """What the audit record of one request says, filled in as the request goes along."""

    request_id: str
    started: float
    action: str = ""
    access_key_id: str = ""
    key_id: str = ""
    key_version_id: str = ""
    context_sha256: str = ""


class RpcEndpoint:
    def __init__(self, services: Services, authenticator: Authenticator, watch: StoreWatch, audit: AuditLog,
                 metrics: Metrics):
        self.services = services
        self.authenticator = authenticator
        self.watch = watch
        self.audit = audit
        self.metrics = metrics

    def __call__(self) -> Response:
        trail = Trail(str(uuid.uuid4()), time.perf_counter())
        outcome = "Success"
        try:
            response = self._handle(trail)
        except KmsError as err:
            outcome, response = err.code, render.error(err, trail.request_id, host_id())
        except (HsmUnavailable, StoreError) as exc:
            log.error("request %s: %s: %s", trail.request_id, type(exc).__name__, exc)
            err = ServiceUnavailable()
            outcome, response = err.code, render.error(err, trail.request_id, host_id())
        except Exception:
            log.exception("request %s failed", trail.request_id)
            err = InternalFailure()
            outcome, response = err.code, render.error(err, trail.request_id, host_id())
        seconds = time.perf_counter() - trail.started
        self.metrics.request(trail.action, outcome, seconds)
        self.audit.record(AuditRecord(
            request_id=trail.request_id,
            access_key_id=trail.access_key_id,
            source_ip=request.remote_addr or "",
            action=trail.action,
            key_id=trail.key_id,
            key_version_id=trail.key_version_id,
            context_sha256=trail.context_sha256,
            outcome=outcome,
            http_status=response.status_code,
            latency_ms=round(seconds * 1000, 3),
        ))
        return response

    def _handle(self, trail: Trail) -> Response:
        query_string = request.environ.get("QUERY_STRING", "").encode("latin-1")
        if len(query_string) > MAX_QUERY_BYTES:
            raise RequestTooLarge("query string", MAX_QUERY_BYTES)
        body = self._body()
        query = parse_pairs(query_string)
        form = parse_pairs(body) if request.mimetype == FORM_TYPE else []
        values = merge(query, form)
        headers = {name.lower(): value for name, value in request.headers.items()}

        action = trail.action = values.get("Action") or headers.get("x-acs-action") or ""
        if not action:
            raise MissingParameter("Action")
        version = values.get("Version") or headers.get("x-acs-version") or ""
        if not version:
            raise MissingParameter("Version")
        if version != API_VERSION:
            raise InvalidVersion()
        registered = ACTIONS.get(action)
        if registered is None:
            raise InvalidActionNotFound()

        self.watch.refresh()
        params = Params(values)
        trail.access_key_id = _claimed_access_key(values, headers)
        trail.context_sha256 = _context_digest(params)
        credential = self.authenticator.authenticate(
            SignedRequest(request.method, request.path, query, values, headers, body)
        )
        trail.access_key_id = credential.access_key_id
        access = registered.touches(action, params, self.services.identity, self.services.keys)
        trail.key_id = access.key_id
        authorize(credential.policy, access)
        result = registered.handler(Call(self.services, params, credential.access_key_id))
        trail.key_id = result.get("KeyId", trail.key_id)
        trail.key_version_id = result.get("KeyVersionId", "")
        return render.success(result, trail.request_id, action, xml=values.get("Format", "").upper() == "XML")

    @staticmethod
    def _body() -> bytes:
        try:
            return request.get_data(cache=True)
        except RequestEntityTooLarge:
            raise RequestTooLarge("body", request.max_content_length or 0) from None


def _claimed_access_key(values: dict[str, str], headers: dict[str, str]) -> str:
    """The AccessKeyId a request claims, before it is authenticated (audited for refused requests too)."""
    match = _V3_CREDENTIAL.search(headers.get("authorization", ""))
    return match.group(1) if match else values.get("AccessKeyId", "")


def _context_digest(params: Params) -> str:
    """SHA-256 of the canonical encryption context a request names, for the audit trail ("" if none)."""
    names = [n for n in ("EncryptionContext", "SourceEncryptionContext", "DestinationEncryptionContext")
             if any(k == n or k.startswith(n + ".") for k in params.values)]
    if not names:
        return ""
    try:
        return context_digest(canonical_aad(params.context(names[0])))
    except KmsError:
        return ""
