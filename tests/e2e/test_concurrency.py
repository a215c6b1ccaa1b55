"""Concurrent GenerateDataKey/Decrypt/Encrypt against one server: every answer checked.

SoftHSM crashes when two threads call it at once; the server serialises PKCS#11 calls per process and
runs several worker processes, so this load must pass without a single error or wrong result.
"""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.conftest import make_sdk

THREADS = 12
ROUNDS = 25


def worker(server, index: int) -> int:
    client = make_sdk(["tea-v3", "tea-v2", "legacy"][index % 3], server)
    context = {"thread": str(index)}
    checked = 0
    for round_number in range(ROUNDS):
        data_key = client.call("GenerateDataKey", KeyId=server.alias, EncryptionContext=context,
                               NumberOfBytes=16 + round_number)
        assert len(base64.b64decode(data_key["Plaintext"])) == 16 + round_number
        opened = client.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext=context)
        assert opened["Plaintext"] == data_key["Plaintext"]
        message = base64.b64encode(f"{index}:{round_number}".encode()).decode()
        sealed = client.call("Encrypt", KeyId=server.alias, Plaintext=message, EncryptionContext=context)
        assert client.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"],
                           EncryptionContext=context)["Plaintext"] == message
        checked += 2
    return checked


def test_parallel_data_keys_and_decrypts(server):
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda i: worker(server, i), range(THREADS)))
    assert results == [2 * ROUNDS] * THREADS


def _children(pid: int) -> list[int]:
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as listing:
            found += [int(child) for child in listing.read().split()]
    return found


def test_every_server_thread_is_scheduled_as_batch(server):
    """``serve`` runs as SCHED_BATCH by default (hsmkms.server.apply_scheduling): the master, every worker, and
    every thread they started, granian's I/O and hand-over threads among them, since threads inherit it."""
    workers = _children(server.process.pid)
    assert len(workers) == 2
    for pid in (server.process.pid, *workers):
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        if pid in workers:
            assert len(threads) >= 4  # request thread, granian's I/O and hand-over threads, the audit writer ...
        policies = {tid: _policy(tid) for tid in threads}
        assert set(policies.values()) - {None} == {os.SCHED_BATCH}, policies


def _policy(tid: int) -> int | None:
    try:
        return os.sched_getscheduler(tid)
    except ProcessLookupError:  # a thread that ended since it was listed (granian ends idle blocking threads)
        return None
