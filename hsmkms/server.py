"""``hsmkms serve``: a pre-forking production WSGI server (gunicorn) in front of ``create_app``.

The master process checks the token and the schema once, closes its PKCS#11 session, and only then forks:
each worker initialises the library, logs in and opens its own session after the fork.
"""

from __future__ import annotations

import logging
import os
import shutil

from gunicorn.app.base import BaseApplication

from hsmkms.app import build_runtime, create_app
from hsmkms.metrics import MULTIPROC_ENV
from hsmkms.scheduler import Scheduler
from hsmkms.settings import Settings

log = logging.getLogger(__name__)


def worker_count(settings: Settings) -> int:
    return settings.workers or (os.cpu_count() or 1)


def preflight(settings: Settings) -> None:
    """Raise with a clear message when the store or the HSM is not usable; leaves nothing open."""
    runtime = build_runtime(settings)
    try:
        runtime.store.migrate()
        runtime.hsm.open()
        runtime.services.access_keys.ensure_service_key()
    finally:
        runtime.close()


class _GunicornApp(BaseApplication):
    def __init__(self, settings: Settings, options: dict):
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self):
        return create_app(self._settings)


def _start_scheduler(worker) -> None:
    """gunicorn post_worker_init: each worker runs the maintenance scheduler after the fork."""
    runtime = worker.wsgi.extensions["hsmkms"]
    settings = runtime.settings
    worker.hsmkms_scheduler = Scheduler(runtime.services.maintenance, settings.scheduler_interval_seconds)
    worker.hsmkms_scheduler.start()


def _worker_exit(server, worker) -> None:
    """gunicorn worker_exit: stop the scheduler and write out the queued audit records."""
    scheduler = getattr(worker, "hsmkms_scheduler", None)
    if scheduler is not None:
        scheduler.stop()
    audit = getattr(worker, "wsgi", None) and worker.wsgi.extensions.get("hsmkms_audit")
    if audit is not None:
        audit.close()


def prepare_metrics_directory(settings: Settings) -> None:
    """Workers write their counters to files here and /metrics adds them up (prometheus multiprocess mode).
    Set before any worker starts; emptied so that counts start at zero with the server."""
    directory = settings.data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)


def serve(settings: Settings) -> None:
    preflight(settings)
    prepare_metrics_directory(settings)
    options = {
        "bind": [settings.listen, *([settings.metrics_listen] if settings.metrics_listen else [])],
        "workers": worker_count(settings),
        "worker_class": "gthread",
        "threads": 4,
        # The Tea SDK puts every parameter, a 6 KB plaintext included, in the URL: gunicorn's request-line
        # limit (at most 8190) would refuse it.  The application bounds the query string itself.
        "limit_request_line": 0,
        "graceful_timeout": 30,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "hsmkms",
        "control_socket_disable": True,
        "post_worker_init": _start_scheduler,
        "worker_exit": _worker_exit,
    }
    if settings.tls_certificate is not None:
        options |= {"certfile": str(settings.tls_certificate), "keyfile": str(settings.tls_key)}
    log.info("serving on %s://%s with %d workers", settings.scheme, settings.listen, options["workers"])
    _GunicornApp(settings, options).run()
