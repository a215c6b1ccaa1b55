"""``hsmkms serve``: granian (WSGI) worker processes in front of ``create_app``.

Why granian: measured on the 2-core development machine (README, Performance), it costs about 130 µs of
CPU per request against 320-350 µs for gunicorn (sync or gthread), which gave hsmkms 1.7-2x the requests a
second at lower latency; it never answers with an HTML page, and it shuts down gracefully on SIGTERM.
Each worker serves ``hsmkms.front``: granian's RSGI interface, which reads a request body whole and under a
deadline before the WSGI application runs, so that slow clients cannot hold the worker.

The master process checks the token and the schema once, closes its PKCS#11 session, and only then forks:
each worker initialises the library, logs in and opens its own session after the fork, and runs the
maintenance scheduler.  With a separate operations listener ([metrics] listen), the master serves
/metrics (every worker's figures, from PROMETHEUS_MULTIPROC_DIR), /healthz and /readyz (from the workers'
heartbeats) itself.
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from granian import Granian
from granian.constants import HTTPModes, Interfaces, RuntimeModes, SSLProtocols
from granian.http import HTTP1Settings
from granian.log import LogLevels

from hsmkms.app import Application, build_runtime, create_app, readiness
from hsmkms.front import WsgiFront
from hsmkms.hsm.backend import HsmError
from hsmkms.metrics import MULTIPROC_ENV
from hsmkms.scheduler import Scheduler
from hsmkms.settings import Settings

log = logging.getLogger(__name__)

# Granian reads a whole request head into this buffer: the Tea SDK puts up to ~30 KB of parameters in the URL.
REQUEST_HEAD_BYTES = 128 * 1024
# Connections open at once, for the whole server (each worker takes its share; granian's default).
MAX_CONNECTIONS = 1024
HEARTBEAT_SECONDS = 2.0
GRACEFUL_SECONDS = 30


def worker_count(settings: Settings) -> int:
    return settings.workers or (os.cpu_count() or 1)


def preflight(settings: Settings) -> None:
    """Raise with a clear message when the store or the HSM is not usable; leaves nothing open."""
    runtime = build_runtime(settings)
    try:
        runtime.store.migrate()
        runtime.hsm.open()
        runtime.services.access_keys.ensure_service_key()
        runtime.nonces.prepare(time.time())
        for legacy in ("nonces.db", "nonces.db-wal", "nonces.db-shm"):  # left by versions that kept nonces in SQLite
            (settings.data_dir / legacy).unlink(missing_ok=True)
    finally:
        runtime.close()


def run_directory(settings: Settings) -> Path:
    return settings.data_dir / "run"


def prepare_run_directory(settings: Settings) -> None:
    """Metrics files (prometheus multiprocess mode) and worker heartbeats live here; emptied at every start.
    Set before any worker starts, since prometheus_client picks its mode when first imported."""
    directory = run_directory(settings)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)


def worker_app(settings: Settings) -> Application:
    """What each worker serves, made in the worker after the fork."""
    app = create_app(settings)
    # Log in and list the token's objects, and read the keys, now rather than in the first requests.
    app.runtime.watch.refresh()
    app.runtime.services.keys.warm()
    try:
        app.runtime.hsm.open()
    except HsmError as exc:  # the requests will answer 503 and the backend reconnects by itself
        log.error("worker %d could not open the HSM: %s", os.getpid(), exc)
    Scheduler(app.runtime.services.maintenance, settings.scheduler_interval_seconds,
              app.runtime.store.job_lock()).start()
    app.metrics.start_flushing()
    if settings.metrics_listen:
        threading.Thread(target=_heartbeat, args=(app, run_directory(settings)), name="hsmkms-heartbeat",
                         daemon=True).start()
    # Granian runs no atexit hooks in its workers on SIGTERM; multiprocessing's finalizers do run.
    multiprocessing.util.Finalize(app, app.close, exitpriority=10)
    return app


def front(settings: Settings, app, on_serving: Callable[[], None] | None = None) -> WsgiFront:
    """The RSGI application granian serves in each worker, in front of the WSGI ``app``."""
    return WsgiFront(app, settings.max_body_bytes, settings.body_timeout_seconds, on_serving)


class StopsWhileStarting:
    """Keeps a stop signal that reaches a worker while it starts, and sends it again once granian handles it.

    Until granian sets a worker's own handlers, after the application is made, a forked worker runs the
    handlers it inherited from the master, which do nothing in it.  A SIGTERM then (a stop just after the
    start) was lost: the worker went on serving until the master killed it ``workers_kill_timeout`` later.
    The signals are blocked across each fork (``hold`` before, ``release`` in the master after), so none
    arrives in the worker before ``watch`` has set its handlers; ``replay`` once granian's are set."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None

    def register(self) -> None:
        """Around every fork of this process from now on."""
        os.register_at_fork(before=self.hold, after_in_parent=self.release, after_in_child=self.watch)

    def hold(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def release(self) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)

    def watch(self) -> None:
        self.received = None
        try:
            for signum in self.SIGNALS:
                signal.signal(signum, self._keep)
        except ValueError:  # forked from a thread other than the main one: handlers cannot be set there
            pass
        self.release()  # a signal that came meanwhile is kept now

    def _keep(self, signum: int, _frame) -> None:
        self.received = self.received or signum

    def replay(self) -> None:
        if self.received is not None:
            log.info("worker %d was asked to stop while it started: stopping", os.getpid())
            os.kill(os.getpid(), self.received)


def _heartbeat(app: Application, directory: Path) -> None:
    """Tell the master, every HEARTBEAT_SECONDS, whether this worker is ready."""
    path = directory / f"ready.{os.getpid()}"
    temporary = directory / f".ready.{os.getpid()}.tmp"  # this worker's own, and not matched by ready.*
    while True:
        try:
            ready, _ = readiness(app.runtime)
            temporary.write_text("1" if ready else "0")
            temporary.replace(path)
        except Exception:  # a report missed is a worker shown not ready for a moment, not a heartbeat gone
            log.exception("worker %d could not write its readiness report", os.getpid())
        time.sleep(HEARTBEAT_SECONDS)


def apply_scheduling(settings: Settings) -> None:
    """With ``[server] scheduling = "batch"`` (the default), ask Linux to schedule this process as SCHED_BATCH,
    and with it every worker it forks and every thread they start (both inherit the policy).

    A request crosses threads twice in a worker: granian's I/O thread hands it to the request thread, and the
    request thread hands the response back.  As normal threads, each wake-up preempted the thread that was
    running, mid-request, at once: about three context switches a request on 2 cores.  A waking SCHED_BATCH
    thread does not preempt: it runs when a CPU is free or at the next scheduler tick, and then takes the
    requests and responses that gathered meanwhile in one go (1.3 context switches a request).  Nothing else
    changes: the processes keep their nice weight, so their share of the CPU against other processes stays the
    same.  Measured with the benchmark (README, Performance): about 15% less server CPU a request and 20% more
    requests a second, p99 no higher.  The bare app of the benchmark is served the same way.

    A process started with another policy than the default (``chrt``, systemd's ``CPUSchedulingPolicy=``) keeps
    it: that was the operator's choice.  With ``scheduling = "default"`` every process keeps the policy it was
    started with (for a machine shared with busy processes, where a waking request must not wait for the
    scheduler's tick)."""
    if settings.scheduling != "batch" or not hasattr(os, "SCHED_BATCH"):  # chosen so, or not Linux
        return
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        log.info("serving with the scheduling policy the server was started with")
        return
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:
        log.warning("could not set the SCHED_BATCH scheduling policy (%s): serving with the default one", exc)


def server_options(settings: Settings) -> dict:
    """The granian options ``serve`` uses (the benchmark serves its bare app with the same)."""
    host, port = settings.listen_host_port
    options = {
        "address": host,
        "port": port,
        # RSGI, not WSGI: see hsmkms.front (bodies are read under a deadline before the application runs).
        "interface": Interfaces.RSGI,
        "workers": worker_count(settings),
        "backpressure": max(1, MAX_CONNECTIONS // worker_count(settings)),
        # RSGI takes one; the application runs on the event loop's thread (PKCS#11 calls are serialised
        # within a process anyway).
        "blocking_threads": 1,
        # One I/O thread a worker: its application runs on one thread anyway, and handing requests between
        # several cost CPU (about 6 us a request for the bare app, 10-20 for hsmkms) and lengthened p99
        # (measured in alternating runs of the benchmark's requests).  granian's Rust task implementation
        # saved as much again, but kept every request's data: a worker grew by 297 MiB over 5,000 requests
        # with 60 KB query strings (tests/e2e/test_policy_limits.py), so asyncio's tasks stay.
        "runtime_mode": RuntimeModes.st,
        "http": HTTPModes.http1,
        "websockets": False,
        "http1_settings": HTTP1Settings(max_buffer_size=REQUEST_HEAD_BYTES),
        "log_access": False,  # the audit trail records requests, without their parameters
        "log_level": LogLevels(settings.log_level.lower()),
        "respawn_failed_workers": True,
        "workers_kill_timeout": GRACEFUL_SECONDS,
    }
    if settings.tls_certificate is not None:
        # rustls: ECDHE key exchange and AEAD ciphers only (AES-GCM, ChaCha20-Poly1305), whatever the version.
        options |= {"ssl_cert": settings.tls_certificate, "ssl_key": settings.tls_key,
                    "ssl_protocol_min": SSLProtocols(f"tls{settings.tls_min_version}")}
    return options


def serve(settings: Settings) -> None:
    preflight(settings)
    prepare_run_directory(settings)
    server = Granian("hsmkms.server:worker_app", **server_options(settings))
    if settings.metrics_listen:
        from hsmkms.operations import start_operations_listener

        start_operations_listener(settings, worker_count(settings), run_directory(settings))
    log.info("serving on %s://%s with %d workers", settings.scheme, settings.listen, worker_count(settings))
    stops = StopsWhileStarting()
    stops.register()
    apply_scheduling(settings)
    server.serve(target_loader=lambda _target: front(settings, worker_app(settings), on_serving=stops.replay))
