"""``create_app(settings)``: the Flask application factory; wires store, HSM backend and services.

Nothing here talks to the HSM or the database at import or construction time: the PKCS#11 session opens
on first use in each process (after a pre-forking server forked), so the same factory serves the
development server, gunicorn workers and tests.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from hsmkms.api import render
from hsmkms.api.actions import ACTIONS, Services
from hsmkms.api.auth import Authenticator
from hsmkms.api.rpc import RpcEndpoint, host_id, new_request_id
from hsmkms.audit import AuditLog
from hsmkms.errors import (
    InternalFailure,
    InvalidActionNotFound,
    KmsError,
    ParseRequestParameterException,
    RequestTooLarge,
    UnsupportedHTTPMethod,
)
from hsmkms.hsm.backend import HsmBackend
from hsmkms.hsm.pkcs11 import Pkcs11Backend
from hsmkms.metrics import MeteredHsm, Metrics
from hsmkms.service.access_keys import SERVICE_KEY_ID, AccessKeyService
from hsmkms.service.asymmetric import AsymmetricService
from hsmkms.service.crypto import CryptoService
from hsmkms.service.keys import Identity, KeyService
from hsmkms.service.maintenance import Maintenance
from hsmkms.service.tags import TagService
from hsmkms.service.watch import StoreWatch
from hsmkms.settings import Settings
from hsmkms.store.base import NonceCache, Store
from hsmkms.store.choice import open_nonce_cache, open_store

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a process needs to serve or administer: built once per process."""

    settings: Settings
    store: Store
    nonces: NonceCache
    hsm: HsmBackend
    watch: StoreWatch
    services: Services

    def close(self) -> None:
        self.hsm.close()
        self.store.close()
        self.nonces.close()


def build_runtime(settings: Settings, *, hsm: HsmBackend | None = None, clock: Callable[[], float] = time.time,
                  metrics: Metrics | None = None) -> Runtime:
    settings.apply_process_environment()
    store = open_store(settings)
    if hsm is None:
        hsm = Pkcs11Backend(settings.module, settings.token_label, settings.read_pin, settings.hsm_wait_seconds,
                            lock_path=settings.hsm_lock_path, profile=settings.hsm_profile,
                            init_reserved=settings.init_reserved or None, deployment=settings.deployment,
                            gcm_iv=settings.gcm_iv)
        log.info("HSM: PKCS#11 module %s, token %r, profile %s, deployment %r", settings.module,
                 settings.token_label, settings.hsm_profile.name, settings.deployment or "(default)")
    if metrics is not None:
        hsm = MeteredHsm(hsm, metrics)
    watch = StoreWatch(store)
    identity = Identity(settings.region, settings.account_id)
    keys = KeyService(store, hsm, identity, watch, clock)
    services = Services(
        keys=keys,
        crypto=CryptoService(keys, hsm, token_iv=settings.gcm_iv == "token"),
        tags=TagService(keys),
        access_keys=AccessKeyService(store, hsm, watch, clock, token_iv=settings.gcm_iv == "token"),
        maintenance=Maintenance(keys),
        identity=identity,
        asymmetric=AsymmetricService(keys, hsm),
    )
    nonces = open_nonce_cache(settings)
    return Runtime(settings, store, nonces, hsm, watch, services)


class Application:
    """The WSGI application: requests for ``/`` go straight to the RPC endpoint, everything else to Flask
    (health, readiness and metrics, and the Alibaba-shaped answers for unknown paths)."""

    def __init__(self, rpc: RpcEndpoint, flask_app: Flask, runtime: Runtime, audit: AuditLog, metrics: Metrics):
        self.rpc = rpc
        self.flask = flask_app
        self.runtime = runtime
        self.audit = audit
        self.metrics = metrics

    def __call__(self, environ: dict, start_response: Callable):
        if environ.get("PATH_INFO") == "/":
            return self.rpc(environ, start_response)
        return self.flask(environ, start_response)

    def close(self) -> None:
        """Write out the audit trail and the last metrics (at worker exit)."""
        self.audit.close()
        self.metrics.flush()


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> Application:
    metrics = Metrics(set(ACTIONS))
    runtime = runtime or build_runtime(settings, metrics=metrics)
    # Request freshness is judged by the wall clock; the runtime's clock (injectable for tests) drives
    # the key lifecycle.
    authenticator = Authenticator(runtime.services.access_keys.credential, runtime.nonces, time.time,
                                  settings.clock_skew_seconds)
    # The audit writer is a thread: made here, in the serving process, after any fork.
    audit = AuditLog(settings.audit_log_path, settings.audit_max_bytes, settings.audit_backup_count)
    endpoint = RpcEndpoint(runtime.services, authenticator, runtime.watch, audit, metrics, settings.max_body_bytes)
    flask_app = _operations_app(settings, runtime, metrics)
    return Application(endpoint, flask_app, runtime, audit, metrics)


def readiness(runtime: Runtime) -> tuple[bool, bytes]:
    # The HSM canary is the access-key service key: a real token object, restricted to GCM, every worker uses.
    checks = {"hsm": runtime.hsm.ping(SERVICE_KEY_ID), "store": runtime.store.ping(), "nonces": runtime.nonces.ping()}
    return all(checks.values()), json.dumps(checks, separators=(",", ":")).encode()


def _operations_app(settings: Settings, runtime: Runtime, metrics: Metrics) -> Flask:
    """Flask serves everything but the RPC endpoint.  With a separate operations listener ([metrics] listen,
    served by the master process), a worker answers /metrics, /healthz and /readyz with not-found."""
    app = Flask("hsmkms")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False  # OPTIONS is answered UnsupportedHTTPMethod like others

    if not settings.metrics_listen:
        @app.get("/healthz")
        def healthz() -> Response:
            return render.flask_response(render.json_reply({"status": "ok"}))

        @app.get("/readyz")
        def readyz() -> Response:
            ready, body = readiness(runtime)
            return render.flask_response(render.Reply(200 if ready else 503, render.JSON_TYPE, body))

        @app.get("/metrics")
        def metrics_view() -> Response:
            payload, content_type = metrics.exposition()
            return render.flask_response(render.Reply(200, content_type, payload))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Werkzeug's own answers (unknown path, wrong method ...) in the Alibaba shape.
        err: KmsError
        if exc.code == 404:
            err = InvalidActionNotFound()
        elif exc.code == 405:
            err = UnsupportedHTTPMethod()
        elif exc.code == 413:
            err = RequestTooLarge("body", settings.max_body_bytes)
        elif exc.code is not None and exc.code < 500:
            err = ParseRequestParameterException()
        else:
            err = InternalFailure()
        return render.flask_response(render.error(err, new_request_id(), host_id(request.environ)))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        request_id = new_request_id()
        log.exception("request %s: unhandled error outside the RPC endpoint", request_id)
        return render.flask_response(render.error(InternalFailure(), request_id, host_id(request.environ)))

    return app
