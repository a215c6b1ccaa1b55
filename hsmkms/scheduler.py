"""The background thread in each server worker that runs due maintenance: deletions, rotations, recovery.

Every worker runs one, and runs the maintenance steps when the store's job lock says so: with SQLite every
worker does (the steps are claim-protected in the metadata store, so running them in several processes is
safe and a dead worker is covered by the others); with PostgreSQL only the one process of the cluster that
holds the lock does, and another takes over at its next tick after the holder died.
"""

from __future__ import annotations

import logging
import random
import threading

from hsmkms.service.maintenance import Maintenance
from hsmkms.store.base import JobLock

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, maintenance: Maintenance, interval_seconds: float, lock: JobLock):
        self._maintenance = maintenance
        self._lock = lock
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hsmkms-scheduler", daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._lock.close()

    def _run(self) -> None:
        # Start after a short random delay so that workers started together do not tick together.
        delay = random.uniform(1, min(10, self._interval))
        while not self._stop.wait(delay):
            try:
                if self._lock.held():
                    self._maintenance.run_once()
            except Exception:
                log.exception("scheduled maintenance failed; retrying in %s s", self._interval)
            delay = self._interval
