"""The shared nonce store: claims, expiry, pruning, processes and threads, and a disk it cannot use."""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hsmkms.store import nonces as nonces_module
from hsmkms.store.base import StoreError
from hsmkms.store.nonces import NonceStore

NOW = 1_700_000_000.0
WINDOW = 900.0
RACE_NONCES = 2000


@pytest.fixture
def path(tmp_path):
    return tmp_path / "nonces.db"


@pytest.fixture
def store(path):
    store = NonceStore(path)
    yield store
    store.close()


def claim(store: NonceStore, nonce: str, now: float = NOW, expires: float | None = None, key: str = "AK") -> bool:
    return store.claim(key, nonce, now, now + WINDOW if expires is None else expires)


def test_first_claim_wins_and_a_replay_loses(store):
    assert claim(store, "n1") is True
    assert claim(store, "n1") is False
    assert claim(store, "n1", now=NOW + WINDOW) is False  # still inside its window
    assert claim(store, "n2") is True


def test_a_nonce_is_per_access_key(store):
    assert claim(store, "shared", key="AK")
    assert claim(store, "shared", key="AK2")
    assert not claim(store, "shared", key="AK2")
    # The digest separates the key from the nonce: ("A", "Kx") is not ("AK", "x").
    assert claim(store, "x", key="AK")
    assert claim(store, "Kx", key="A")


def test_an_expired_record_may_be_claimed_again(store):
    assert claim(store, "n", now=NOW, expires=NOW + 1)  # recorded until NOW + 2
    # Within PRUNE_INTERVAL_S of the first claim, so this is the record being claimed again, not pruned.
    assert claim(store, "n", now=NOW + 2) is False
    assert claim(store, "n", now=NOW + 3, expires=NOW + 4) is True
    assert store.count() == 1
    assert claim(store, "n", now=NOW + 4) is False


def test_pruning_removes_expired_entries_and_keeps_live_ones(store):
    for i in range(300):
        assert claim(store, f"old-{i}", now=NOW, expires=NOW + 5)
    for i in range(50):
        assert claim(store, f"live-{i}", now=NOW, expires=NOW + 10_000)
    assert store.count() == 350
    interval, slices = nonces_module.PRUNE_INTERVAL_S, nonces_module.PRUNE_SLICES
    now = NOW
    for turn in range(slices):  # one slice of the digest space a pass: all of it after PRUNE_SLICES passes
        now += interval
        assert claim(store, f"trigger-{turn}", now=now, expires=now + 10_000)
        if turn == 0:
            assert 300 < store.count() < 350  # the first pass deleted only what its slice held
    assert store.count() == 50 + slices
    for i in range(50):
        assert not claim(store, f"live-{i}", now=now)


def test_a_pruning_pass_deletes_one_slice(store, monkeypatch):
    monkeypatch.setattr(nonces_module, "PRUNE_SLICES", 4)
    for i in range(400):
        assert claim(store, f"old-{i}", now=NOW, expires=NOW)
    left = [400]
    for turn in range(4):
        assert claim(store, f"t-{turn}", now=NOW + (turn + 1) * nonces_module.PRUNE_INTERVAL_S, expires=NOW + 10**6)
        left.append(store.count() - (turn + 1))  # what is left of the 400
    removed = [before - after for before, after in zip(left, left[1:], strict=False)]
    assert all(40 < r < 160 for r in removed), removed  # about a quarter each: digests are uniform
    assert left[-1] == 0


def test_pruning_waits_for_its_interval(store, monkeypatch):
    monkeypatch.setattr(nonces_module, "PRUNE_SLICES", 1)
    assert claim(store, "old", now=NOW, expires=NOW)  # recorded until NOW + 1
    assert claim(store, "new", now=NOW + 5)
    assert claim(store, "newer", now=NOW + nonces_module.PRUNE_INTERVAL_S - 1)
    assert store.count() == 3  # "old" expired, but the last pass is less than the interval ago
    assert claim(store, "newest", now=NOW + nonces_module.PRUNE_INTERVAL_S)
    assert store.count() == 3  # "old" went, "newest" came


def _race(path, start, results, worker: int) -> None:
    store = NonceStore(path)
    start.wait(10)
    won = [i for i in range(RACE_NONCES) if store.claim("AK", f"race-{i}", NOW, NOW + WINDOW)]
    store.close()
    results.put((worker, won))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_two_processes_racing_win_each_nonce_once(path, method):
    context = multiprocessing.get_context(method)
    start = context.Event()
    results = context.Queue()
    workers = [context.Process(target=_race, args=(path, start, results, n)) for n in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    won = dict(results.get(timeout=30) for _ in workers)
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    assert sorted(won[0] + won[1]) == list(range(RACE_NONCES))  # every nonce won, and exactly once


def test_threads_racing_win_each_nonce_once(store):
    won: list[int] = []
    barrier = threading.Barrier(4)

    def run():
        barrier.wait(10)
        mine = [i for i in range(500) if claim(store, f"t-{i}")]
        won.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(won) == list(range(500))


def _claim_in_child(store: NonceStore, results) -> None:
    results.put((claim(store, "from-child"), claim(store, "from-parent")))


def test_a_store_opened_before_a_fork_opens_its_own_connection_in_the_child(store):
    assert claim(store, "from-parent")  # opens the connection in the parent
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_claim_in_child, args=(store, results))
    child.start()
    child_won, child_replayed = results.get(timeout=30)
    child.join(10)
    assert child.exitcode == 0
    assert (child_won, child_replayed) == (True, False)  # the child sees the parent's claim...
    assert claim(store, "from-child") is False  # ...and the parent the child's
    assert claim(store, "after-fork") is True  # and the parent's connection still works


def test_two_stores_on_one_file_share_it(path):
    first, second = NonceStore(path), NonceStore(path)
    try:
        assert claim(first, "n")
        assert not claim(second, "n")
    finally:
        first.close()
        second.close()


def test_the_files_are_private(store, path):
    assert claim(store, "n")
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_an_unusable_directory_raises_store_error(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    store = NonceStore(not_a_directory / "nonces.db")
    with pytest.raises(StoreError, match="nonce store"):
        claim(store, "n")
    assert not_a_directory.read_text() == "x"  # nothing was replaced
    store.close()


FILL_UNTIL_FULL = """
import os, sys
from hsmkms.store import nonces
from hsmkms.store.base import StoreError
store = nonces.NonceStore(sys.argv[1])
for i in range(400_000):
    try:
        store.claim("AK", f"nonce-{i}", 1_700_000_000.0, 1_700_000_900.0)
    except StoreError as exc:
        print("refused after", i, "claims:", exc)
        break
os.unlink(sys.argv[2])  # space again
print("then:", store.claim("AK", "one-more", 1_700_000_000.0, 1_700_000_900.0),
      store.claim("AK", "nonce-0", 1_700_000_000.0, 1_700_000_900.0))
store.close()
"""


def test_a_full_disk_is_a_store_error_not_a_crash(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        with open(disk / "ballast", "wb") as ballast:
            ballast.write(b"\0" * (3 * 1024 * 1024))  # leaves about 1 MB, a few thousand nonces
        child = subprocess.run(
            [sys.executable, "-c", FILL_UNTIL_FULL, str(disk / "nonces.db"), str(disk / "ballast")],
            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
        assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
        assert re.search(r"refused after [1-9][0-9]{2,} claims: nonce store ", child.stdout), child.stdout
        assert "then: True False" in child.stdout  # usable again once there is space; nothing forgotten
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_claim_waits_for_another_process_to_release_the_lock(store, path):
    assert claim(store, "first")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another worker in the middle of its claim, holding the write lock
    threading.Timer(0.05, lambda: other.execute("COMMIT")).start()
    started = time.monotonic()
    assert claim(store, "second")
    assert 0.04 < time.monotonic() - started < 2
    other.close()


def test_a_lock_held_too_long_is_a_store_error(store, path, monkeypatch):
    monkeypatch.setattr(nonces_module, "BUSY_TIMEOUT_S", 0.05)
    assert claim(store, "first")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked"):
            claim(store, "second")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert claim(store, "second")
