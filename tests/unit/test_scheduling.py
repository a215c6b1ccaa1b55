"""The server's scheduling policy (``[server] scheduling``, hsmkms.server.apply_scheduling); a live server's
threads are checked in tests/e2e/test_concurrency.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from hsmkms.server import apply_scheduling
from hsmkms.settings import Settings

# Run in a child process, so that the test runner's own policy stays as it was.  Prints the policy before,
# after, and in a thread started afterwards.
CHILD = """
import os, sys, threading
from hsmkms.server import apply_scheduling
from hsmkms.settings import Settings
if sys.argv[2] == "idle":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
before = os.sched_getscheduler(0)
apply_scheduling(Settings(scheduling=sys.argv[1]))
seen = []
thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
thread.start()
thread.join()
print(before, os.sched_getscheduler(0), seen[0])
"""


def policies(scheduling: str, started_as: str = "default") -> list[int]:
    result = subprocess.run([sys.executable, "-c", CHILD, scheduling, started_as], capture_output=True, text=True,
                            timeout=60, check=True)
    return [int(policy) for policy in result.stdout.split()]


def test_batch_covers_the_process_and_the_threads_it_starts_afterwards():
    assert policies("batch") == [os.SCHED_OTHER, os.SCHED_BATCH, os.SCHED_BATCH]


def test_default_keeps_the_policy_the_server_was_started_with():
    assert policies("default") == [os.SCHED_OTHER, os.SCHED_OTHER, os.SCHED_OTHER]


def test_a_policy_the_operator_chose_is_kept():
    assert policies("batch", started_as="idle") == [os.SCHED_IDLE, os.SCHED_IDLE, os.SCHED_IDLE]


def test_a_refused_policy_is_a_warning_not_a_failure(monkeypatch, caplog):
    def refuse(*_args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_getscheduler", lambda _pid: os.SCHED_OTHER)
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING, logger="hsmkms.server"):
        apply_scheduling(Settings())
    assert "could not set the SCHED_BATCH scheduling policy" in caplog.text
