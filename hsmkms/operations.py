"""The operations listener ([metrics] listen), served by the master process of ``hsmkms serve``.

/metrics adds up every worker's figures (prometheus multiprocess files), /healthz says the server process
is up, and /readyz is 200 when every worker that has reported in the last few seconds reports ready (at
least one must have).  The workers write those reports (``ready.<pid>``, see ``server._heartbeat``); the
master itself never touches the HSM, so that it can fork new workers safely.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server

from hsmkms.api import render
from hsmkms.api.rpc import host_id, new_request_id
from hsmkms.errors import InvalidActionNotFound
from hsmkms.metrics import exposition
from hsmkms.settings import Settings

log = logging.getLogger(__name__)

FRESH_SECONDS = 6.0


def worker_reports(directory: Path, now: float) -> dict[int, bool]:
    """pid -> ready, for the workers that reported in the last FRESH_SECONDS."""
    reports = {}
    for path in directory.glob("ready.*"):
        try:
            if now - path.stat().st_mtime <= FRESH_SECONDS:
                reports[int(path.suffix[1:])] = path.read_text() == "1"
        except (OSError, ValueError):
            continue  # a worker replacing its report, or a stray file
    return reports


def operations_app(directory: Path):
    def app(environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if method != "GET" or path not in ("/healthz", "/readyz", "/metrics"):
            reply = render.error(InvalidActionNotFound(), new_request_id(), host_id(environ))
        elif path == "/healthz":
            reply = render.json_reply({"status": "ok"})
        elif path == "/readyz":
            reports = worker_reports(directory, time.time())
            ready = bool(reports) and all(reports.values())
            body = {"workers": len(reports), "ready": sum(reports.values())}
            reply = render.Reply(200 if ready else 503, render.JSON_TYPE, json.dumps(body).encode())
        else:
            payload, content_type = exposition()
            reply = render.Reply(200, content_type, payload)
        return reply.start(start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # probes every few seconds: not worth a log line each
        pass


def start_operations_listener(settings: Settings, workers: int, directory: Path) -> None:
    host, port = settings.metrics_host_port
    server = make_server(host, port, operations_app(directory), threaded=True, request_handler=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="hsmkms-operations", daemon=True).start()
    log.info("operations listener on http://%s:%d (/metrics, /healthz, /readyz for %d workers)", host, port, workers)
