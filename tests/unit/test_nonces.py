"""The shared nonce table: claims, expiry, spills, a full table, damage, resizing, processes and threads,
and a disk it cannot use."""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkms.store import nonces as nonces_module
from hsmkms.store.base import StoreError
from hsmkms.store.nonces import CLOCK_STEP_GRACE_S, MAX_SPILL_PAGES, PAGE_BYTES, SLOTS_PER_PAGE, NonceStore

NOW = 1_700_000_000.0
WINDOW = 900.0
RACE_NONCES = 2000
ONE_PAGE_CAPACITY = (1 + MAX_SPILL_PAGES) * SLOTS_PER_PAGE  # a one-page table: its page and the spill pages
KEPT = 1 + CLOCK_STEP_GRACE_S  # a nonce claimed with expires=E is remembered while now <= E + KEPT - 1


@pytest.fixture
def path(tmp_path):
    return tmp_path / "nonces.bin"


@pytest.fixture
def store(path):
    store = NonceStore(path)
    yield store
    store.close()


@pytest.fixture
def tiny(path):
    """A one-page table: every nonce has the same home page, so spills and a full table are easy to reach."""
    store = NonceStore(path, table_pages=1)
    yield store
    store.close()


def claim(store: NonceStore, nonce: str, now: float = NOW, expires: float | None = None, key: str = "AK") -> bool:
    return store.claim(key, nonce, now, now + WINDOW if expires is None else expires)


def test_first_claim_wins_and_a_replay_loses(store):
    assert claim(store, "n1") is True
    assert claim(store, "n1") is False
    assert claim(store, "n1", now=NOW + WINDOW) is False  # still inside its window
    assert claim(store, "n2") is True
    assert store.count(NOW) == 2


def test_a_nonce_is_per_access_key(store):
    assert claim(store, "shared", key="AK")
    assert claim(store, "shared", key="AK2")
    assert not claim(store, "shared", key="AK2")
    # The digest separates the key from the nonce: ("A", "Kx") is not ("AK", "x").
    assert claim(store, "x", key="AK")
    assert claim(store, "Kx", key="A")


def test_an_expired_record_may_be_claimed_again(store):
    assert claim(store, "n", now=NOW, expires=NOW + 1)  # remembered until NOW + 1 + the grace
    assert claim(store, "n", now=NOW + KEPT) is False
    assert claim(store, "n", now=NOW + KEPT + 1, expires=NOW + KEPT + 2) is True  # its old slot, claimed again
    assert store.count(NOW + KEPT + 1) == 1
    assert claim(store, "n", now=NOW + 2 * KEPT) is False
    assert store.count(NOW + 2 * KEPT + 2) == 0


def test_a_nonce_is_kept_past_its_window_for_a_clock_a_little_behind(store):
    # Another worker, its clock read 20 s later, would reuse an expired slot; this one must not see it gone.
    assert claim(store, "n", now=NOW, expires=NOW + 10)
    assert claim(store, "n", now=NOW + 10 + CLOCK_STEP_GRACE_S) is False


def test_a_full_page_spills_and_its_nonces_are_still_found(tiny):
    for i in range(SLOTS_PER_PAGE):  # the home page, full of nonces remembered for a short while
        assert claim(tiny, f"short-{i}", expires=NOW + 5)
    assert claim(tiny, "long", expires=NOW + 10_000)  # into the next page
    later = NOW + 5 + KEPT  # the home page's slots are all free again ...
    assert claim(tiny, "long", now=later) is False  # ... and the spilled nonce is still found
    for i in range(SLOTS_PER_PAGE):
        assert claim(tiny, f"new-{i}", now=later)
    assert claim(tiny, "long", now=later) is False
    assert tiny.count(later) == SLOTS_PER_PAGE + 1


def test_a_full_table_is_a_store_error_and_frees_up_as_nonces_expire(tiny):
    names = [f"n-{i}" for i in range(ONE_PAGE_CAPACITY)]
    assert all(claim(tiny, name, expires=NOW + 60) for name in names)
    assert not any(claim(tiny, name) for name in names)  # every one found, in whichever page it went
    with pytest.raises(StoreError, match="table is full.*nonce_table_mib"):
        claim(tiny, "one-too-many")
    after = NOW + 60 + KEPT
    assert claim(tiny, "one-too-many", now=after)
    assert all(claim(tiny, name, now=after) for name in names[:100])  # expired: may be used again
    assert tiny.count(after) == 101


def test_a_long_lived_nonce_does_not_keep_its_page_from_being_reused(tiny, path):
    # Lifetimes differ (a client's clock ahead or behind): the slot next in turn may still be in use when
    # the ones after it are free.  They are used, rather than spilling into the next page.
    assert claim(tiny, "long", expires=NOW + 10_000)
    for round_ in range(5):
        now = NOW + round_ * (10 + KEPT)
        for i in range(SLOTS_PER_PAGE - 1):
            assert claim(tiny, f"short-{round_}-{i}", now=now, expires=now + 10)
    assert not any(path.read_bytes()[2 * PAGE_BYTES:])  # past the header and the table page: nothing spilled
    assert claim(tiny, "long", now=NOW + 5 * (10 + KEPT)) is False


def test_a_table_fills_most_of_its_slots_before_refusing(path):
    # The documented capacity: the first refusal comes when most slots are in use, not at the first unlucky
    # page (measured: 88-90% with 2,048 pages, 91-97% with 256).
    store = NonceStore(path, table_pages=256)
    claimed = 0
    try:
        with pytest.raises(StoreError, match="table is full"):
            while claimed < 256 * SLOTS_PER_PAGE:
                assert claim(store, f"n-{claimed}")
                claimed += 1
    finally:
        store.close()
    assert claimed > 0.85 * 256 * SLOTS_PER_PAGE


def test_slots_are_reused_in_turn_without_growing_the_file(tiny, path):
    for second in range(0, 50 * ONE_PAGE_CAPACITY, 7):  # far more nonces than slots, each kept 5 s
        assert claim(tiny, f"n-{second}", now=NOW + second, expires=NOW + second + 3)
    assert path.stat().st_size <= (2 + MAX_SPILL_PAGES) * PAGE_BYTES  # header, table page, spill pages


def test_damaged_pages_read_as_empty(path):
    store = NonceStore(path, table_pages=64)
    assert claim(store, "before")
    garbage = b"NPG1" + b"\xff" * (PAGE_BYTES - 4)  # our magic, then an impossible spill and next slot
    with open(path, "r+b") as file:
        for page in range(64 + MAX_SPILL_PAGES):  # every page of the table
            file.seek((1 + page) * PAGE_BYTES)
            file.write(garbage)
    claimed = [f"after-{i}" for i in range(1000)]
    try:
        assert all(claim(store, nonce) for nonce in claimed)  # no error, and no write past a page's end
        assert not any(claim(store, nonce) for nonce in claimed)
        assert path.stat().st_size == (1 + 64 + MAX_SPILL_PAGES) * PAGE_BYTES
        assert store.count(NOW) == len(claimed)  # "before" went with its damaged page
    finally:
        store.close()


def test_a_file_that_is_not_a_nonce_table_is_started_afresh(path):
    old = sqlite3.connect(path)  # the nonce store of earlier versions, at the same path
    old.execute("CREATE TABLE nonces (digest BLOB PRIMARY KEY, expires INTEGER)")
    old.commit()
    old.close()
    store = NonceStore(path)
    try:
        assert claim(store, "n") and not claim(store, "n")
    finally:
        store.close()


def test_resize_carries_the_live_nonces_over(path):
    small = NonceStore(path, table_pages=4)
    live = [f"live-{i}" for i in range(120)]
    assert all(claim(small, nonce, expires=NOW + 600) for nonce in live)
    assert all(claim(small, f"expired-{i}", expires=NOW + 5) for i in range(40))
    small.close()
    later = NOW + 5 + KEPT
    big = NonceStore(path, table_pages=64)
    try:
        assert big.resize(later) is True
        assert big.count(later) == len(live)
        assert not any(claim(big, nonce, now=later) for nonce in live)
        assert claim(big, "expired-0", now=later)
        assert big.resize(later) is False  # already the configured size
    finally:
        big.close()
    again = NonceStore(path, table_pages=4)  # another store on the file: its size is the file's, 64 pages
    try:
        assert not claim(again, "live-0", now=later) and again.count(later) == len(live) + 1
    finally:
        again.close()
    assert not path.with_name(path.name + ".resizing").exists()


def test_a_store_using_the_file_while_another_resizes_it_moves_to_the_new_file(path):
    running = NonceStore(path, table_pages=4)  # a worker of a running server ...
    resizing = NonceStore(path, table_pages=8)  # ... and another process resizing the table meanwhile
    try:
        assert claim(running, "before")
        assert resizing.resize(NOW) is True
        assert claim(running, "after")  # goes into the new file ...
        assert not claim(resizing, "after")  # ... which the other store uses too
        assert not claim(running, "before") and not claim(resizing, "before")
        assert running.count(NOW) == resizing.count(NOW) == 2
    finally:
        running.close()
        resizing.close()


def test_a_resize_retires_the_old_file_by_truncating_it(path):
    running = NonceStore(path, table_pages=4)
    resizing = NonceStore(path, table_pages=8)
    try:
        assert claim(running, "before")
        old_file = os.open(path, os.O_RDONLY)
        try:
            assert resizing.resize(NOW) is True
            assert os.fstat(old_file).st_size == 0  # what the running store's next read shows at once
        finally:
            os.close(old_file)
        assert path.stat().st_size == nonces_module._file_bytes(8)
    finally:
        running.close()
        resizing.close()


def test_a_file_is_made_at_its_whole_size_and_an_older_shorter_one_is_extended(path):
    store = NonceStore(path, table_pages=4)
    assert claim(store, "kept")
    store.close()
    assert path.stat().st_size == nonces_module._file_bytes(4)  # sparse: every page reads whole
    with open(path, "r+b") as file:
        file.truncate(PAGE_BYTES * 3)  # as tables were made before: the header and the pages written so far
    reopened = NonceStore(path, table_pages=4)
    try:
        assert claim(reopened, "new")
        assert path.stat().st_size == nonces_module._file_bytes(4)
        assert reopened.count(NOW) >= 1 and not claim(reopened, "new")
    finally:
        reopened.close()


def test_a_deleted_file_is_made_again_and_shared_within_the_check_interval(path, monkeypatch):
    monkeypatch.setattr(nonces_module, "FILE_CHECK_INTERVAL_S", 0.2)
    running = NonceStore(path)
    try:
        assert claim(running, "a")
        path.unlink()  # by hand, while a worker has it open
        started_later = NonceStore(path)  # a worker started since: it makes a new file
        time.sleep(0.25)  # a claim checks its file at most every FILE_CHECK_INTERVAL_S
        assert claim(running, "b")  # the running worker moved to that file ...
        assert not claim(started_later, "b")  # ... so the two still share one table
        started_later.close()
    finally:
        running.close()


def test_a_damaged_file_header_starts_the_table_afresh(path):
    store = NonceStore(path)
    assert claim(store, "n")
    store.close()
    with open(path, "r+b") as file:
        file.seek(16)
        file.write(bytes(4))  # a table of 0 pages
    store = NonceStore(path, table_pages=8)
    try:
        assert claim(store, "n")  # forgotten with the damaged table, but no crash
        assert not claim(store, "n")
        assert int.from_bytes(path.read_bytes()[16:20], "little") == 8
    finally:
        store.close()


def test_an_access_key_and_nonce_are_never_read_as_another_pair(store):
    assert claim(store, "C", key="A\0B")
    assert claim(store, "B\0C", key="A")
    assert claim(store, "bc", key="a")
    assert claim(store, "c", key="ab")


def _claim_after_fork(store: NonceStore, results) -> None:
    results.put(claim(store, "in-child"))


def test_a_fork_while_another_thread_claims_leaves_the_child_a_working_store(store):
    assert claim(store, "parent")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    with store._lock:  # another thread of the parent in the middle of a claim at the moment of the fork
        child = context.Process(target=_claim_after_fork, args=(store, results))
        child.start()
    assert results.get(timeout=30) is True
    child.join(10)
    assert child.exitcode == 0


def test_a_resize_that_does_not_fit_leaves_the_table_as_it_was(path):
    big = NonceStore(path, table_pages=64)
    nonces = [f"n-{i}" for i in range(ONE_PAGE_CAPACITY + 50)]
    assert all(claim(big, nonce) for nonce in nonces)
    big.close()
    tiny = NonceStore(path, table_pages=1)
    try:
        with pytest.raises(StoreError, match="cannot resize.*table is full"):
            tiny.resize(NOW)
        assert not any(claim(tiny, nonce) for nonce in nonces)  # the 64-page table, still whole
        assert tiny.count(NOW) == len(nonces)
    finally:
        tiny.close()
    assert not path.with_name(path.name + ".resizing").exists()


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


def test_the_file_is_private(store, path, loose_umask):
    assert claim(store, "n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unusable_directory_raises_store_error(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    store = NonceStore(not_a_directory / "nonces.bin")
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
            ballast.write(b"\0" * (3 * 1024 * 1024))  # leaves about 1 MB: a few hundred random table pages
        child = subprocess.run(
            [sys.executable, "-c", FILL_UNTIL_FULL, str(disk / "nonces.bin"), str(disk / "ballast")],
            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
        assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
        assert re.search(r"refused after [1-9][0-9]{2,} claims: nonce store ", child.stdout), child.stdout
        assert "then: True False" in child.stdout  # usable again once there is space; nothing forgotten
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def hold_the_lock(path: Path):
    """Another worker in the middle of its claim: the lock on its own open file."""
    other = os.open(path, os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    return other


# The sleeping retries as configured; then only the spin, with no time left for a sleeping retry.
@pytest.mark.parametrize("settings", [{}, {"BUSY_SPIN_S": 2.0, "BUSY_TIMEOUT_S": 0.0}], ids=["retries", "spin"])
def test_a_claim_waits_for_another_process_to_release_the_lock(store, path, monkeypatch, settings):
    for name, value in settings.items():
        monkeypatch.setattr(nonces_module, name, value)
    assert claim(store, "first")
    other = hold_the_lock(path)
    threading.Timer(0.05, lambda: os.close(other)).start()
    started = time.monotonic()
    assert claim(store, "second")
    assert 0.04 < time.monotonic() - started < 2


def test_a_lock_held_too_long_is_a_store_error(store, path, monkeypatch):
    monkeypatch.setattr(nonces_module, "BUSY_TIMEOUT_S", 0.05)
    assert claim(store, "first")
    other = hold_the_lock(path)
    try:
        with pytest.raises(StoreError, match="locked"):
            claim(store, "second")
    finally:
        os.close(other)
    assert claim(store, "second")


def test_a_nonce_lies_where_its_keyed_digest_says(store, path):
    """The file format: a nonce's slot holds blake2b(len:key+nonce, keyed by the file's key, 8 bytes), in the
    page that digest names.  A table written before any change to how the digest is computed stays readable."""
    assert claim(store, "n-1", key="LTAIexample")
    with open(path, "rb") as file:
        header = file.read(PAGE_BYTES)
        key = header[20:52]  # after the 16-byte magic and the 4-byte page count
        pages = int.from_bytes(header[16:20], "little")
        digest = hashlib.blake2b(b"11:LTAIexamplen-1", key=key, digest_size=8).digest()
        file.seek((1 + int.from_bytes(digest, "little") % pages) * PAGE_BYTES)
        assert digest in file.read(PAGE_BYTES)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 90), st.integers(1, 200)), min_size=1, max_size=400))
def test_claims_on_a_small_table_agree_with_a_plain_model(tmp_path_factory, steps):
    """Any sequence of claims (the common case and spills alike, on a one-page table) answers as a dictionary of
    nonce -> the second until which it is kept would, as long as the table has room."""
    store = NonceStore(tmp_path_factory.mktemp("model") / "nonces.bin", table_pages=1)
    kept: dict[str, int] = {}
    now = NOW
    try:
        for nonce, advance, window in steps:
            now += advance
            name = f"n-{nonce}"
            live = {n for n, until in kept.items() if until >= int(now)}
            if name not in live and len(live) >= ONE_PAGE_CAPACITY:
                continue  # a full table is a StoreError, tested on its own
            expected = name not in live
            assert claim(store, name, now=now, expires=now + window) is expected
            if expected:
                kept[name] = int(now + window) + CLOCK_STEP_GRACE_S
    finally:
        store.close()
