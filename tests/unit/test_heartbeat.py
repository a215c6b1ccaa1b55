"""Worker readiness reports: several workers writing into one run directory at once."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from types import SimpleNamespace

from hsmkms import server
from hsmkms.operations import worker_reports

WORKERS = 3


class Healthy:
    def ping(self, *canary) -> bool:
        return True


def _worker(directory, results) -> None:
    errors = []
    handler = logging.Handler()
    handler.emit = errors.append
    logging.getLogger("hsmkms.server").addHandler(handler)
    app = SimpleNamespace(runtime=SimpleNamespace(hsm=Healthy(), store=Healthy(), nonces=Healthy()))
    beat = threading.Thread(target=server._heartbeat, args=(app, directory), daemon=True)
    beat.start()
    time.sleep(1.0)
    results.put((beat.is_alive(), len(errors)))


def test_workers_reporting_at_once_do_not_trip_over_each_other(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "HEARTBEAT_SECONDS", 0.0005)  # inherited by the forked workers
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(tmp_path, results)) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert outcomes == [(True, 0)] * WORKERS  # every heartbeat alive, no report failed
    reports = worker_reports(tmp_path, time.time())
    assert reports == {worker.pid: True for worker in workers}
    assert sorted(p.name for p in tmp_path.glob("ready.*")) == sorted(f"ready.{w.pid}" for w in workers)
