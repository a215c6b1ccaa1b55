"""Signature nonces seen inside the clock window, shared by every worker process.

A nonce must be refused on every worker once any worker accepted it, and remembered for as long as a
request carrying it could still pass the clock check.  The nonces live in a small LMDB file that every
process maps: LMDB is made for several processes sharing one file, a claim is a single write transaction of
a few microseconds (an SQLite INSERT cost 15-40), and the memory of each process stays flat whatever the
request count.  Only a 16-byte digest of (AccessKeyId, nonce) is stored, with its expiry; a second database
ordered by expiry lets pruning visit only what has expired, never the whole file.

The file is disposable state, written for speed: sync=False leaves the flushing to the OS.  A process crash
loses nothing (the writes are already in the shared page cache); an OS crash may forget recent nonces,
whose timestamps then still bound any replay to the clock window.  For the same reason a file that is not
a valid LMDB environment is replaced, not repaired.

LMDB forbids using an environment across fork() and opening one file twice in a process, so each process
opens its own environment per file, on first use, shared by that process's stores.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import lmdb

from hsmkms.store.base import StoreError

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 10.0
PRUNE_BATCH = 10_000  # index entries deleted per pass at most, so no request stalls long behind a backlog
MAP_SIZE = 4 << 30  # the most the file may hold; the file grows as it fills
FILE_MODE = 0o600

_U32 = struct.Struct(">I")  # big-endian, so the expiry index sorts by time
_U32_MAX = 0xFFFFFFFF
# The file is not a usable environment (rather than one we may not open): it may be replaced.
_REPLACEABLE = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError, lmdb.PageNotFoundError)


@dataclass(eq=False)
class _Env:
    """This process's environment on one file, shared by the stores of the process."""

    env: lmdb.Environment
    nonce: object  # digest -> expiry
    expiry: object  # expiry + digest -> b""
    users: int = 0
    next_prune: float = 0.0


# Every transaction runs under _lock, and fork() waits for it (see the hooks below), so no transaction is
# ever cut in half by a fork.
_lock = threading.Lock()
_envs: dict[str, _Env] = {}
_pid = os.getpid()
_generation = 0  # bumped when the inherited environments are dropped; a store re-attaches when it changes


def _forget_inherited() -> None:
    """In a forked child: drop the parent's environments, so the next claim opens this process's own."""
    global _lock, _pid, _generation
    _lock = threading.Lock()
    _pid = os.getpid()
    _generation += 1
    inherited = list(_envs.values())
    _envs.clear()
    for shared in inherited:
        # Safe in the child: no transaction was live at the fork and only write transactions are used, so
        # no reader slot is held; closing unmaps this process's copy and lets py-lmdb open the file anew
        # (it refuses a file it believes already open in the process).
        try:
            shared.env.close()
        except lmdb.Error:
            pass


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_forget_inherited)


def _clamp(seconds: int) -> int:
    return min(max(seconds, 0), _U32_MAX)


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + "-lock")


def _open_env(path: Path) -> _Env:
    # Not writemap: through writable memory a full disk would kill the process with SIGBUS rather than fail
    # the write (and a claim would cost 5 µs rather than 13).
    env = lmdb.open(str(path), subdir=False, map_size=MAP_SIZE, sync=False, metasync=False, writemap=False,
                    max_dbs=2, lock=True, mode=FILE_MODE, max_spare_txns=0)
    try:
        return _Env(env, env.open_db(b"nonce"), env.open_db(b"expiry"))
    except BaseException:
        env.close()
        raise


def _open(path: Path) -> _Env:
    try:
        return _open_env(path)
    except _REPLACEABLE:
        pass
    # Serialise the replacement across processes, and try again under the lock: two processes replacing
    # the file one after the other would leave the first on a deleted file, seeing nonces no other sees.
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return _open_env(path)
        except _REPLACEABLE as exc:
            log.warning("nonce store %s is not a usable LMDB file (%s); replacing it with an empty one", path, exc)
        for stale in (path, _lock_path(path)):
            stale.unlink(missing_ok=True)
        return _open_env(path)
    finally:
        os.close(fd)


def _acquire(path: Path) -> _Env:
    key = os.path.realpath(path)
    shared = _envs.get(key)
    if shared is None:
        shared = _envs[key] = _open(path)
    shared.users += 1
    return shared


def _release(shared: _Env) -> None:
    shared.users -= 1
    if shared.users <= 0:
        for key, value in list(_envs.items()):
            if value is shared:
                del _envs[key]
        shared.env.close()


def _prune(txn: lmdb.Transaction, shared: _Env, now_s: int) -> bool:
    """Delete up to PRUNE_BATCH index entries expired before ``now_s``, with their records; True when none is left."""
    limit = _U32.pack(now_s)
    cursor = txn.cursor(db=shared.expiry)
    if not cursor.first():
        return True
    for _ in range(PRUNE_BATCH):
        key = cursor.key()
        if not key or key[:4] >= limit:
            return True
        digest = key[4:]
        # Only while the record still carries this expiry: a stale entry must never delete a newer claim.
        if txn.get(digest, db=shared.nonce) == key[:4]:
            txn.delete(digest, db=shared.nonce)
        cursor.delete()  # moves to the next entry
    key = cursor.key()
    return not key or key[:4] >= limit


class NonceStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._shared: _Env | None = None
        self._generation = -1  # the _generation self._shared was attached in

    def _attach(self) -> _Env:
        """This process's environment; called with _lock held."""
        if self._shared is None or self._generation != _generation:
            self._shared = _acquire(self.path)
            self._generation = _generation
        return self._shared

    def claim(self, access_key_id: str, nonce: str, now: float, expires: float) -> bool:
        """Record the nonce until ``expires``; False when it is already recorded and not yet expired."""
        digest = hashlib.sha256(f"{access_key_id}\0{nonce}".encode("utf-8", "surrogatepass")).digest()[:16]
        value = _U32.pack(_clamp(int(expires) + 1))
        now_s = _clamp(int(now))
        if os.getpid() != _pid:  # forked without the hooks running (not through os.fork)
            _forget_inherited()
        try:
            with _lock:
                shared = self._attach()
                with shared.env.begin(write=True) as txn:
                    if now >= shared.next_prune:
                        done = _prune(txn, shared, now_s)
                        shared.next_prune = now + PRUNE_INTERVAL_S if done else now
                    if txn.put(digest, value, overwrite=False, db=shared.nonce):
                        txn.put(value + digest, b"", db=shared.expiry)
                        return True
                    old = txn.get(digest, db=shared.nonce)
                    if _U32.unpack(old)[0] >= now_s:
                        return False
                    # Expired but not pruned yet: claim it again, and move its index entry.
                    txn.put(digest, value, db=shared.nonce)
                    txn.delete(old + digest, db=shared.expiry)
                    txn.put(value + digest, b"", db=shared.expiry)
                    return True
        except lmdb.MapFullError as exc:
            raise StoreError(f"the nonce store {self.path} is full: {exc}") from exc
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"nonce store {self.path}: {exc}") from exc

    def count(self) -> tuple[int, int]:
        """(recorded nonces, expiry index entries), pruned or not; for tests and diagnostics."""
        if os.getpid() != _pid:
            _forget_inherited()
        try:
            with _lock:
                shared = self._attach()
                # A write transaction, like every other here: no reader slot is ever held (see _forget_inherited).
                with shared.env.begin(write=True) as txn:
                    return txn.stat(shared.nonce)["entries"], txn.stat(shared.expiry)["entries"]
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"nonce store {self.path}: {exc}") from exc

    def close(self) -> None:
        if os.getpid() != _pid:
            _forget_inherited()
        with _lock:
            if self._shared is not None and self._generation == _generation:
                _release(self._shared)
            self._shared = None
