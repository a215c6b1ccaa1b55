"""The server's scheduling policy (hsmkms.server.schedule_as_batch); a live server's threads are checked in
tests/e2e/test_concurrency.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from hsmkms import server

# In a child process: the test runner's own policy stays as it was.
CHILD = """
import os, threading
from hsmkms.server import schedule_as_batch
before = os.sched_getscheduler(0)
schedule_as_batch()
seen = []
thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
thread.start()
thread.join()
print(before == os.SCHED_OTHER, os.sched_getscheduler(0) == os.SCHED_BATCH, seen == [os.SCHED_BATCH])
"""


def test_the_process_and_the_threads_it_starts_afterwards_are_batch():
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True", "True", "True"]


CHOSEN = """
import os
from hsmkms.server import schedule_as_batch
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
schedule_as_batch()
print(os.sched_getscheduler(0) == os.SCHED_IDLE)
"""


def test_a_policy_the_operator_chose_is_kept():
    result = subprocess.run([sys.executable, "-c", CHOSEN], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True"]


def test_a_refused_policy_is_a_warning_not_a_failure(monkeypatch, caplog):
    def refuse(*_args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_getscheduler", lambda _pid: os.SCHED_OTHER)
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING, logger="hsmkms.server"):
        server.schedule_as_batch()
    assert "could not set the SCHED_BATCH scheduling policy" in caplog.text
