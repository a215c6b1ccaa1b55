"""Signature nonces seen inside the clock window, shared by every worker process.

A nonce must be refused on every worker once any worker accepted it, and remembered for as long as a
request carrying it could still pass the clock check.  The store is one file holding a hash table of
PAGE_BYTES pages, read and written with pread/pwrite under an exclusive file lock.  A claim is four
system calls: lock, read the nonce's page, write it back, unlock.

- A nonce is kept as an 8-byte digest of (AccessKeyId, nonce), keyed with a random key from the file's
  header so that nobody can choose nonces that crowd one page.  The digest also picks its home page.
- A slot holds a digest and the second until which it is remembered: the end of the request's window plus
  CLOCK_STEP_GRACE_S.  A slot whose second has passed is free again.  A page fills its slots in turn, and
  when the next one is still in use, its first free one.  There is no pruning pass, and the file never
  grows past its table.  It is made at its full size at once (sparse: a page takes disk space when first
  written), so that every page reads whole.
- When its home page has no free slot, a nonce goes to one of the next MAX_SPILL_PAGES pages, and the home
  page records how far its nonces spilled: a lookup reads that far.
- A table too full even for that is a StoreError (answered 503).  The size is set by
  ``[auth] nonce_table_mib``: 1 MiB has 86,000 slots, and the first refusal came at 88-97% of them in
  tests.  The default, 128 MiB, holds about 9.5 million nonces: 10,000 requests a second for a 15-minute
  window.  The size is fixed in the file when it is made; ``resize`` (which ``hsmkms serve`` runs before
  its workers start) carries every live nonce over to a new file of the configured size, then truncates the
  old one to nothing: a process that still had the old file open finds its page read short at its next
  claim, and moves to the new file before it claims.  A file deleted or replaced otherwise (by hand, or a
  resize that crashed before the truncation) is noticed within FILE_CHECK_INTERVAL_S, when a claim checks
  that its file is still the one at the path: one fstat a second, not one a claim (an fstat cost a claim
  about 4 µs, almost a third of it).
- There is no memory map: the pages live in the OS page cache, not in the workers.  Their resident memory
  stays flat however many requests they serve, and a full disk is an error from pwrite, not a SIGBUS.  The
  file is sparse and takes disk space as its pages are first used.

The file is disposable state (a restore removes it): an OS crash may forget recent nonces, whose
timestamps then still bound any replay.  A page, or a file header, that does not read back as one of ours
counts as empty.

Why not SQLite, used before: in the benchmark's server (2 workers), a claim in SQLite took 54 µs of CPU, and
33 µs here.  Over six alternating runs a GenerateDataKey request took 416 µs of server CPU with SQLite and
373 µs with this table, and the throughput rose by 11%.  (Measured before the check for a replaced file, one
fstat a claim, was added.)
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from hsmkms.store.base import StoreError

log = logging.getLogger(__name__)

PAGE_BYTES = 512
PAGE_HEADER = struct.Struct("<4sHH")  # magic; how many pages past this one its nonces spilled; next slot
SLOT_BYTES = 12  # an 8-byte digest, then the second until which it is remembered (4 bytes, little-endian)
SLOTS_AT = PAGE_HEADER.size
SLOTS_PER_PAGE = (PAGE_BYTES - SLOTS_AT) // SLOT_BYTES  # 42, filling the page exactly
PAGE_MAGIC = b"NPG1"
EMPTY_PAGE = PAGE_HEADER.pack(PAGE_MAGIC, 0, 0) + bytes(PAGE_BYTES - SLOTS_AT)
FILE_HEADER = struct.Struct("<16sI32s")  # magic, table pages, digest key: the file's first page
FILE_MAGIC = b"hsmkms-nonces-v1"
PAGES_PER_MIB = (1 << 20) // PAGE_BYTES
DEFAULT_TABLE_MIB = 128
MAX_SPILL_PAGES = 16  # the file has this many pages past the table, so a spill never wraps around
MAX_TABLE_PAGES = 65536 * PAGES_PER_MIB  # 64 GiB
MAX_UNTIL = 0xFFFF_FFFF  # 2106: the second until which a nonce is kept fits in 4 bytes
# Kept this long past its window: a worker whose clock reading is a little behind another's (or a clock
# stepped back) must still find it.
CLOCK_STEP_GRACE_S = 30
FILE_CHECK_INTERVAL_S = 1.0
BUSY_TIMEOUT_S = 5.0
BUSY_RETRY_S = 0.00005
# How long a claim that finds the lock held keeps trying before it sleeps.  A holder keeps it for microseconds,
# while a sleep costs at least the timer slack (50 us) and then a wait for a CPU; giving the CPU away
# (sched_yield) instead lengthened p99.  In the benchmark's server (2 workers) 7% of claims found the lock held,
# and spinning first left a sleep to 1 in 5 of those: more requests a second in each of 4 alternating rounds
# (median +7%) at no more CPU a request.
BUSY_SPIN_S = 0.00004
SCAN_BATCH_PAGES = 4096

assert SLOTS_AT + SLOTS_PER_PAGE * SLOT_BYTES == PAGE_BYTES


class NonceStore:
    def __init__(self, path: Path, table_pages: int = DEFAULT_TABLE_MIB * PAGES_PER_MIB):
        if not 1 <= table_pages <= MAX_TABLE_PAGES:
            raise ValueError(f"a nonce table has 1 to {MAX_TABLE_PAGES} pages, not {table_pages}")
        self.path = Path(path)
        self.table_pages = table_pages  # of a file this store makes; an existing file keeps its own
        self._lock = threading.Lock()  # one claim at a time in a process: the file lock is per open file
        self._fd = -1
        self._pid = 0
        self._pages = 0
        self._key = b""
        self._keyed = hashlib.blake2b(digest_size=8)  # blake2b keyed with _key (by _open), copied for each digest
        self._check_file_after = 0.0  # monotonic time after which a claim checks that the file is still ours
        _stores.add(self)

    def claim(self, access_key_id: str, nonce: str, now: float, expires: float) -> bool:
        """Record the nonce until ``expires`` (and CLOCK_STEP_GRACE_S more); False when it is already
        recorded and not yet expired at ``now``."""
        # The key's length first: no (key, nonce) pair reads like another when joined.
        data = f"{len(access_key_id)}:{access_key_id}{nonce}".encode("utf-8", "surrogatepass")
        until = min(max(int(expires) + CLOCK_STEP_GRACE_S, 1), MAX_UNTIL)
        try:
            with self._lock:
                for check in (False, True):
                    fd = self._current_file_locked(check)
                    try:
                        hasher = self._keyed.copy()
                        hasher.update(data)
                        return _claim(fd, self._pages, hasher.digest(), max(int(now), 1), until)
                    except _FileRetired:
                        pass
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    self._drop_file()  # a resize replaced it: the table is in the file at the path now
                raise StoreError("the file was replaced twice during one claim")
        except (OSError, StoreError) as exc:
            raise StoreError(f"nonce store {self.path}: {exc}") from exc

    def resize(self, now: float) -> bool:
        """Give the file a table of ``table_pages`` if its own has another size, carrying over every nonce
        remembered at ``now``; True if it did.  ``hsmkms serve`` does it before its workers start; a process
        still using the file meanwhile waits for the lock, then finds its file replaced and opens the new one."""
        now = max(int(now), 1)
        try:
            with self._lock:
                fd = self._current_file_locked()
                try:
                    if self._pages == self.table_pages:
                        return False
                    staging = self.path.with_name(self.path.name + ".resizing")
                    staging.unlink(missing_ok=True)
                    new_fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    try:
                        _make_table(new_fd, self.table_pages, self._key)
                        for digest, until in _live(fd, self._pages, now):
                            _claim(new_fd, self.table_pages, digest, now, until)
                        os.replace(staging, self.path)
                        os.ftruncate(fd, 0)  # retired: another process using it sees that at its next read
                    except BaseException:
                        os.close(new_fd)
                        staging.unlink(missing_ok=True)
                        raise
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                self._fd, self._pages = new_fd, self.table_pages
                self._check_file_after = time.monotonic() + FILE_CHECK_INTERVAL_S
                return True
        except (OSError, StoreError) as exc:
            raise StoreError(f"nonce store {self.path}: cannot resize the table: {exc}") from exc

    def prepare(self, now: float) -> None:
        """Give the file the configured table size (``hsmkms serve`` does it before its workers start)."""
        if self.resize(now):
            log.info("the nonce table now has %d MiB ([auth] nonce_table_mib)", self.table_pages // PAGES_PER_MIB)

    def ping(self) -> bool:
        """The table can be opened and locked."""
        try:
            with self._lock:
                fcntl.flock(self._current_file_locked(), fcntl.LOCK_UN)
            return True
        except (OSError, StoreError):
            return False

    def count(self, now: float) -> int:
        """How many nonces are remembered at ``now``.  Reads the whole table: for tests and diagnostics."""
        try:
            with self._lock:
                fd = self._current_file_locked()
                try:
                    return sum(1 for _ in _live(fd, self._pages, max(int(now), 1)))
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        except (OSError, StoreError) as exc:
            raise StoreError(f"nonce store {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                os.close(self._fd)
            self._fd, self._pid = -1, 0

    def _current_file_locked(self, check: bool = True) -> int:
        """This process's descriptor of the file, with the file lock taken.  When the file was replaced (a
        resize by another process) or deleted since this process opened it, the one now at the path is
        opened instead: every process must use the same table.  Without ``check`` (a claim, which notices a
        file retired by a resize in its read), that is checked only every FILE_CHECK_INTERVAL_S.  Called with
        the thread lock held."""
        while True:
            # A forked child starts without a descriptor (_forget_after_fork): no getpid() per claim.
            fd = self._fd if self._fd >= 0 else self._open()
            _lock_file(fd)
            now = time.monotonic()
            if not check and now < self._check_file_after:
                return fd
            status = os.fstat(fd)
            if status.st_nlink and status.st_size:  # still at the path, and not truncated by a resize
                self._check_file_after = now + FILE_CHECK_INTERVAL_S
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._drop_file()

    def _drop_file(self) -> None:
        """Close this process's descriptor (of a file no longer at the path); the next use opens the path."""
        os.close(self._fd)
        self._fd, self._pid = -1, 0

    def _open(self) -> int:
        """Open the file for this process.  A forked child opens its own: a file lock belongs to the open
        file, which parent and child would otherwise share."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _lock_file(fd)
            try:
                magic, pages, key = FILE_HEADER.unpack(os.pread(fd, FILE_HEADER.size, 0).ljust(FILE_HEADER.size))
                if magic == FILE_MAGIC and 1 <= pages <= MAX_TABLE_PAGES:
                    self._pages, self._key = pages, key
                    if os.fstat(fd).st_size < _file_bytes(pages):  # made before tables were made whole
                        os.ftruncate(fd, _file_bytes(pages))
                else:  # new, or not a table of ours: it only ever held nonces, so it starts afresh
                    self._pages, self._key = self.table_pages, secrets.token_bytes(32)
                    os.ftruncate(fd, 0)
                    _make_table(fd, self._pages, self._key)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()
        self._keyed = hashlib.blake2b(key=self._key, digest_size=8)
        # Checked at once under the lock: a resize may have retired the file between its open and its lock.
        self._check_file_after = 0.0
        return fd

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork
        self._fd, self._pid = -1, 0  # the parent's descriptor stays open, unused, in the child


_stores: weakref.WeakSet[NonceStore] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [store._forget_after_fork() for store in list(_stores)])


# --- the table (called with the file locked) -----------------------------------------------------------------


def _claim(fd: int, table_pages: int, digest: bytes, now: int, until: int) -> bool:
    home = int.from_bytes(digest, "little") % table_pages
    page = _read(fd, home)
    _, spill, next_slot = PAGE_HEADER.unpack_from(page)
    if spill == 0 and _until(page, _slot_at(next_slot)) < now and _find(page, digest) < 0:
        _write(fd, home, _insert(page, next_slot, digest, until))  # the common case: one page, its next slot free
        return True
    return _claim_spilled(fd, home, page, digest, now, until)


def _claim_spilled(fd: int, home: int, home_page: bytes, digest: bytes, now: int, until: int) -> bool:
    """The general case: the nonce may be in any page its home's nonces spilled into, or need a new one."""
    spill = PAGE_HEADER.unpack_from(home_page)[1]
    pages = [home_page] + [_read(fd, home + distance) for distance in range(1, spill + 1)]
    for distance, page in enumerate(pages):
        at = _find(page, digest)
        if at >= 0:
            if _until(page, at) >= now:
                return False
            _write(fd, home + distance, page[:at + 8] + until.to_bytes(4, "little") + page[at + SLOT_BYTES:])
            return True
    for distance in range(MAX_SPILL_PAGES + 1):
        if distance == len(pages):
            pages.append(_read(fd, home + distance))
        page = pages[distance]
        slot = _free_slot(page, now)
        if slot is not None:
            if distance > spill:  # the home page says so first: a crash between the two writes loses nothing
                _write(fd, home, PAGE_HEADER.pack(PAGE_MAGIC, distance, PAGE_HEADER.unpack_from(home_page)[2])
                       + home_page[SLOTS_AT:])
            _write(fd, home + distance, _insert(page, slot, digest, until))
            return True
    raise StoreError(f"no free slot within {MAX_SPILL_PAGES} pages of the nonce's own: the table is full "
                     "(raise [auth] nonce_table_mib)")


class _FileRetired(Exception):
    """A page read short: the file was truncated, as a resize does to the file it replaced."""


def _read(fd: int, index: int) -> bytes:
    """Table page ``index``."""
    page = os.pread(fd, PAGE_BYTES, (1 + index) * PAGE_BYTES)
    if len(page) != PAGE_BYTES:
        raise _FileRetired()
    return _checked(page)


def _checked(page: bytes) -> bytes:
    """The page as read; a page never written, or not one of ours, reads as empty."""
    if len(page) == PAGE_BYTES and page.startswith(PAGE_MAGIC):
        _, spill, next_slot = PAGE_HEADER.unpack_from(page)
        if spill <= MAX_SPILL_PAGES and next_slot < SLOTS_PER_PAGE:
            return page
    return EMPTY_PAGE


def _write(fd: int, index: int, page: bytes) -> None:
    if os.pwrite(fd, page, (1 + index) * PAGE_BYTES) != PAGE_BYTES:
        raise OSError("short write")


def _file_bytes(table_pages: int) -> int:
    """The size of a file with a table of ``table_pages``: its header, the table, the pages spills may reach."""
    return (1 + table_pages + MAX_SPILL_PAGES) * PAGE_BYTES


def _make_table(fd: int, table_pages: int, key: bytes) -> None:
    """Write the header of an empty table, and give the file its whole size (sparse)."""
    _write(fd, -1, FILE_HEADER.pack(FILE_MAGIC, table_pages, key).ljust(PAGE_BYTES, b"\0"))
    os.ftruncate(fd, _file_bytes(table_pages))


def _find(page: bytes, digest: bytes) -> int:
    """Where the slot holding ``digest`` starts, or -1."""
    at = page.find(digest, SLOTS_AT)
    while at >= 0 and (at - SLOTS_AT) % SLOT_BYTES:  # found across two slots: look on
        at = page.find(digest, at + 1)
    return at


def _slot_at(slot: int) -> int:
    return SLOTS_AT + SLOT_BYTES * slot


def _free_slot(page: bytes, now: int) -> int | None:
    """The page's next slot in turn if it is free, else its first free one (nonces live for different
    times: one long-lived nonce must not keep the free slots behind it from being used)."""
    next_slot = PAGE_HEADER.unpack_from(page)[2]
    for slot in (next_slot, *range(SLOTS_PER_PAGE)):
        if _until(page, _slot_at(slot)) < now:  # never used (0) or expired
            return slot
    return None


def _until(page: bytes, at: int) -> int:
    return int.from_bytes(page[at + 8:at + SLOT_BYTES], "little")


def _insert(page: bytes, slot: int, digest: bytes, until: int) -> bytes:
    """The page with ``digest`` in ``slot``, and the slot after it next in turn."""
    _, spill, _ = PAGE_HEADER.unpack_from(page)
    at = _slot_at(slot)
    return b"".join((PAGE_HEADER.pack(PAGE_MAGIC, spill, (slot + 1) % SLOTS_PER_PAGE), page[SLOTS_AT:at],
                     digest, until.to_bytes(4, "little"), page[at + SLOT_BYTES:]))


def _live(fd: int, table_pages: int, now: int) -> Iterator[tuple[bytes, int]]:
    """Every (digest, until) remembered at ``now``, reading SCAN_BATCH_PAGES pages at a time."""
    now = max(now, 1)  # an empty slot's second is 0
    total = table_pages + MAX_SPILL_PAGES
    for first in range(0, total, SCAN_BATCH_PAGES):
        batch = os.pread(fd, min(SCAN_BATCH_PAGES, total - first) * PAGE_BYTES, (1 + first) * PAGE_BYTES)
        for start in range(0, len(batch), PAGE_BYTES):
            page = _checked(batch[start:start + PAGE_BYTES])
            for at in range(SLOTS_AT, PAGE_BYTES, SLOT_BYTES):
                until = _until(page, at)
                if until >= now:
                    yield page[at:at + 8], until


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _lock_file(fd: int) -> None:
    """The exclusive lock on the file.  A claim holds it for microseconds; when another process has it, try
    again at once for BUSY_SPIN_S, then every BUSY_RETRY_S, and give up with a StoreError after BUSY_TIMEOUT_S
    (a stopped process)."""
    if _try_lock(fd):
        return
    spin_until = time.perf_counter() + BUSY_SPIN_S
    while time.perf_counter() < spin_until:
        if _try_lock(fd):
            return
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        time.sleep(BUSY_RETRY_S)
        if _try_lock(fd):
            return
        if time.monotonic() > deadline:
            raise StoreError("the file stayed locked by another process")
