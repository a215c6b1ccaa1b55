"""``create_app(settings)``: the Flask application factory; wires store, HSM backend and services.

Nothing here talks to the HSM or the database at import or construction time: the PKCS#11 session opens
on first use in each process (after a pre-forking server forked), so the same factory serves the
development server, gunicorn workers and tests.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from hsmkms.api import render
from hsmkms.api.actions import ACTIONS, Services
from hsmkms.api.auth import Authenticator
from hsmkms.api.rpc import RpcEndpoint, host_id
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
from hsmkms.service.access_keys import AccessKeyService
from hsmkms.service.crypto import CryptoService
from hsmkms.service.keys import Identity, KeyService
from hsmkms.service.maintenance import Maintenance
from hsmkms.service.tags import TagService
from hsmkms.service.watch import StoreWatch
from hsmkms.settings import Settings
from hsmkms.store.nonces import NonceStore
from hsmkms.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a process needs to serve or administer: built once per process."""

    settings: Settings
    store: SqliteStore
    nonces: NonceStore
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
    store = SqliteStore(settings.database_path, settings.busy_timeout_ms)
    if hsm is None:
        hsm = Pkcs11Backend(settings.module, settings.token_label, settings.read_pin, settings.hsm_wait_seconds,
                            lock_path=settings.data_dir / "hsm.lock")
    if metrics is not None:
        hsm = MeteredHsm(hsm, metrics)
    watch = StoreWatch(store)
    identity = Identity(settings.region, settings.account_id)
    keys = KeyService(store, hsm, identity, watch, clock)
    services = Services(
        keys=keys,
        crypto=CryptoService(keys, hsm),
        tags=TagService(keys),
        access_keys=AccessKeyService(store, hsm, watch, clock),
        maintenance=Maintenance(keys),
        identity=identity,
    )
    nonces = NonceStore(settings.data_dir / "nonces.db")
    return Runtime(settings, store, nonces, hsm, watch, services)


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> Flask:
    metrics = Metrics(set(ACTIONS))
    runtime = runtime or build_runtime(settings, metrics=metrics)
    app = Flask("hsmkms")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["hsmkms"] = runtime

    # Request freshness is judged by the wall clock; the runtime's clock (injectable for tests) drives
    # the key lifecycle.
    authenticator = Authenticator(runtime.services.access_keys.credential, runtime.nonces, time.time,
                                  settings.clock_skew_seconds)
    # The audit writer is a thread: made here, in the serving process, after any fork.
    audit = AuditLog(settings.audit_log_path, settings.audit_max_bytes, settings.audit_backup_count)
    app.extensions["hsmkms_audit"] = audit
    endpoint = RpcEndpoint(runtime.services, authenticator, runtime.watch, audit, metrics)

    # With a separate operations listener ([metrics] listen), /metrics, /healthz and /readyz are answered
    # there only, and the KMS API only on the main listener.
    ops_port = str(settings.metrics_host_port[1]) if settings.metrics_listen else None

    def operations(view: Callable[[], Response]) -> Callable[[], Response]:
        def guarded() -> Response:
            if ops_port is not None and request.environ.get("SERVER_PORT") != ops_port:
                return render.error(InvalidActionNotFound(), str(uuid.uuid4()), host_id())
            return view()

        guarded.__name__ = view.__name__
        return guarded

    def api() -> Response:
        if ops_port is not None and request.environ.get("SERVER_PORT") == ops_port:
            return render.error(InvalidActionNotFound(), str(uuid.uuid4()), host_id())
        return endpoint()

    app.add_url_rule("/", "rpc", api, methods=["GET", "POST"], provide_automatic_options=False)

    @app.get("/healthz")
    @operations
    def healthz() -> Response:
        return Response('{"status":"ok"}', content_type=render.JSON_TYPE)

    @app.get("/readyz")
    @operations
    def readyz() -> Response:
        hsm_ok, store_ok = runtime.hsm.ping(), runtime.store.ping()
        body = f'{{"hsm":{str(hsm_ok).lower()},"store":{str(store_ok).lower()}}}'
        return Response(body, 200 if hsm_ok and store_ok else 503, content_type=render.JSON_TYPE)

    @app.get("/metrics")
    @operations
    def metrics_view() -> Response:
        payload, content_type = metrics.exposition()
        return Response(payload, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Werkzeug's own answers (unknown path, wrong method, body too large ...) in the Alibaba shape.
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
        return render.error(err, str(uuid.uuid4()), host_id())

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        request_id = str(uuid.uuid4())
        log.exception("request %s: unhandled error outside the RPC endpoint", request_id)
        return render.error(InternalFailure(), request_id, host_id())

    return app
