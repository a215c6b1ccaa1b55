"""The RPC endpoint: ``GET /`` and ``POST /``, one request in, one Alibaba-shaped response out.

Path of a request: parse and merge parameters -> Action and Version -> authenticate -> authorize (what the
action touches, against the access key's policy) -> handler from the ACTIONS registry -> render -> one
audit record.  Every failure becomes the documented error body; unexpected exceptions are logged with the
request id and answered ``InternalFailure`` without details.

This is a plain WSGI callable rather than a Flask view: it is the one hot path, and Flask's request and
response machinery would cost about as much CPU as everything the endpoint itself does apart from the HSM.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hsmkms.api import render
from hsmkms.api.actions import ACTIONS, Call, Services
from hsmkms.api.auth import Authenticator, SignedRequest
from hsmkms.api.authorize import Resolver, authorize
from hsmkms.api.params import Params, merge, parse_pairs
from hsmkms.audit import MAX_FIELD_CHARS, AuditLog, AuditRecord
from hsmkms.errors import (
    InternalFailure,
    InvalidActionNotFound,
    InvalidParameter,
    InvalidVersion,
    KmsError,
    MissingParameter,
    ParseRequestParameterException,
    RequestTimeout,
    RequestTooLarge,
    ServiceUnavailable,
    UnsupportedHTTPMethod,
)
from hsmkms.hsm.backend import HsmConfigurationError, HsmUnavailable
from hsmkms.metrics import Metrics
from hsmkms.service.watch import StoreWatch
from hsmkms.store.base import StoreError

log = logging.getLogger(__name__)

API_VERSION = "2016-01-20"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_QUERY_BYTES = 64 * 1024
_V3_CREDENTIAL = re.compile(r"Credential=([^,\s]*)")
_CONTEXT_PARAMETERS = ("EncryptionContext", "SourceEncryptionContext", "DestinationEncryptionContext")


def new_request_id() -> str:
    """A version-4 UUID in its usual text form, from the random module (reseeded in every forked worker): ids
    need to be unique, not secret.  Written out directly: a uuid.UUID object costs several times as much."""
    raw = bytearray(random.randbytes(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def host_id(environ: dict) -> str:
    return environ.get("HTTP_HOST", "")[:255] or "hsmkms"


def lower_headers(environ: dict) -> dict[str, str]:
    """The request headers by lower-case name, as the signature schemes name them."""
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if environ.get(key):
            headers[name] = environ[key]
    return headers


def read_body(environ: dict, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes; unreadable framing is the client's error, not ours."""
    stream = environ["wsgi.input"]
    try:
        declared = environ.get("CONTENT_LENGTH")
        if declared:
            length = int(declared)
            if length > limit:
                raise RequestTooLarge("body", limit)
            return stream.read(length) if length > 0 else b""
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = stream.read(limit + 1)
            if len(body) > limit:
                raise RequestTooLarge("body", limit)
            return body
        return b""
    except KmsError:
        raise
    except TimeoutError:  # the server stopped waiting for it (hsmkms.front)
        raise RequestTimeout() from None
    except Exception as exc:  # a broken chunk, a client gone mid-body, a malformed length
        log.info("unreadable request body: %s", type(exc).__name__)
        raise ParseRequestParameterException("The request body could not be read.") from None


@dataclass(slots=True)
class Trail:
    """What the audit record of one request says, filled in as the request goes along."""

    request_id: str
    started: float
    action: str = ""
    access_key_id: str = ""
    key_id: str = ""
    key_version_id: str = ""
    params: Params | None = None  # its encryption context is hashed for the record, after the handler parsed it


class RpcEndpoint:
    def __init__(self, services: Services, authenticator: Authenticator, watch: StoreWatch, audit: AuditLog,
                 metrics: Metrics, max_body_bytes: int):
        self.services = services
        self.authenticator = authenticator
        self.watch = watch
        self.audit = audit
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.resolver = Resolver(services.keys, services.crypto, services.identity)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        trail = Trail(new_request_id(), time.perf_counter())
        outcome = "Success"
        try:
            reply = self._handle(environ, trail)
        except KmsError as err:
            outcome, reply = err.code, render.error(err, trail.request_id, host_id(environ))
        except (HsmUnavailable, StoreError) as exc:
            log.error("request %s: %s: %s", trail.request_id, type(exc).__name__, exc)
            err = ServiceUnavailable()
            outcome, reply = err.code, render.error(err, trail.request_id, host_id(environ))
        except HsmConfigurationError as exc:  # the token refused the operation: ours to fix, its message says how
            log.error("request %s: %s", trail.request_id, exc)
            err = InternalFailure()
            outcome, reply = err.code, render.error(err, trail.request_id, host_id(environ))
        except Exception:
            log.exception("request %s failed", trail.request_id)
            err = InternalFailure()
            outcome, reply = err.code, render.error(err, trail.request_id, host_id(environ))
        seconds = time.perf_counter() - trail.started
        self.metrics.request(trail.action, outcome, seconds)
        # The client chose the access key id and the action: cut here, so a queue of junk stays small.
        self.audit.record(AuditRecord(
            request_id=trail.request_id,
            access_key_id=trail.access_key_id[:MAX_FIELD_CHARS],
            source_ip=environ.get("REMOTE_ADDR", ""),
            action=trail.action[:MAX_FIELD_CHARS],
            key_id=trail.key_id,
            key_version_id=trail.key_version_id,
            context_sha256=_context_digest(trail.params) if trail.params is not None else "",
            outcome=outcome,
            http_status=reply.status,
            latency_ms=seconds * 1000,
        ))
        return reply.start(start_response)

    def _handle(self, environ: dict, trail: Trail) -> render.Reply:
        method = environ.get("REQUEST_METHOD", "")
        if method not in ("GET", "POST"):
            raise UnsupportedHTTPMethod()
        query_string = environ.get("QUERY_STRING", "").encode("latin-1")
        if len(query_string) > MAX_QUERY_BYTES:
            raise RequestTooLarge("query string", MAX_QUERY_BYTES)
        body = read_body(environ, self.max_body_bytes)
        query = parse_pairs(query_string)
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        form = mimetype == FORM_TYPE
        values = merge(query, parse_pairs(body) if form else [])
        # The headers by name are read by the V3 scheme (an Authorization header), and name the action and the
        # version when the parameters do not: built only then (a V1 request needs none of them).
        needs_headers = "HTTP_AUTHORIZATION" in environ or not (values.get("Action") and values.get("Version"))
        headers = lower_headers(environ) if needs_headers else {}

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
        params = trail.params = Params(values)
        trail.access_key_id = _claimed_access_key(values, headers)
        credential = self.authenticator.authenticate(
            SignedRequest(method, environ.get("PATH_INFO", "/"), query, values, headers, body,
                          (environ.get("QUERY_STRING", ""), body.decode("latin-1")) if form else
                          (environ.get("QUERY_STRING", ""),))
        )
        trail.access_key_id = credential.access_key_id
        access = registered.touches(action, params, self.resolver)
        trail.key_id = access.key_id
        authorize(credential.policy, access)
        if params.boolean("DryRun"):
            # Alibaba answers a dry run with an error that says whether the call would have succeeded;
            # hsmkms does not predict that, and refuses rather than doing the real thing.
            raise InvalidParameter("DryRun", "Dry runs are not supported here; nothing was done.")
        result = registered.handler(Call(self.services, params, credential.access_key_id, access))
        trail.key_id = result.get("KeyId", trail.key_id)
        trail.key_version_id = result.get("KeyVersionId", "")
        return render.success(result, trail.request_id, action, xml=values.get("Format", "").upper() == "XML")


def _claimed_access_key(values: dict[str, str], headers: dict[str, str]) -> str:
    """The AccessKeyId a request claims, before it is authenticated (audited for refused requests too)."""
    match = _V3_CREDENTIAL.search(headers.get("authorization", ""))
    return match.group(1) if match else values.get("AccessKeyId", "")


def _context_digest(params: Params) -> str:
    """SHA-256 of the canonical encryption context a request names, for the audit trail ("" if none).
    Parsed once per request: after a handler that used the context, this only hashes it."""
    dotted = params.dotted  # a flattened context (Node SDK)?
    for name in _CONTEXT_PARAMETERS:
        if name in params.values or dotted and any(k.startswith(name + ".") for k in params.values):
            try:
                return params.context(name).digest
            except KmsError:
                return ""
    return ""
