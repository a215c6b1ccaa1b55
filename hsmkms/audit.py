"""The audit trail: one compact JSON object per line for every request, written off the request path.

What a line holds is fixed by :class:`AuditRecord`: who (access key, source address), what (action, key,
key version, a SHA-256 of the encryption context), and how it ended (error code, HTTP status, latency).  It
has no field for plaintexts, data keys, secrets, signatures or the PIN, so none can leak into the trail.

Writing: :meth:`AuditLog.record` puts the record on a bounded queue and returns at once; a background thread
formats and writes what has gathered, every tenth of a second.  A request therefore never waits on disk
I/O; if the writer falls so far behind that the queue is full, the record is dropped, counted in
``AuditLog.dropped`` and reported by one warning per burst on the ``hsmkms.audit`` logger.  The audit lines
themselves never pass through a :class:`logging.Logger`, so they cannot reach the root logger's handlers.
What has gathered goes to the operating system in one write() (no fsync).

Files are created with mode 0600, including every file opened after a rotation.

Rotation, and why it depends on the process model:

- ``max_bytes > 0``: size-based rotation in-process, exactly like
  :class:`logging.handlers.RotatingFileHandler` (``path`` -> ``path.1`` -> ... -> ``path.<backup_count>``).
  A rotation is a rename that other processes cannot see, so this mode is for a **single writer process**
  (``workers = 1``, the CLI, tests).  With several gunicorn workers, give each worker its own file instead.
- ``max_bytes == 0`` (never rotate in-process): the mode for **several processes appending to one file**.
  Each process opens the file with ``O_APPEND`` and writes each line with a single ``write()``, so lines
  from different workers interleave whole and are never split.  Rotation is left to ``logrotate`` (without
  ``copytruncate``): the handler is a :class:`logging.handlers.WatchedFileHandler`, which notices that the
  path now names a new file and reopens it before its next line, so no line is lost and no signal is needed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import logging.handlers
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_string  # json.dumps' own, in C
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000
# Each wake-up of the writer takes the GIL from the request thread and the CPU's caches with it: waking every
# 100 ms instead of 20 ms saved 5 µs of the request thread's CPU a request (alternating in-process runs).
WRITE_INTERVAL_S = 0.1
MAX_FIELD_CHARS = 256  # a client controls some fields (Action); a junk request must not write a 64 KB line
FILE_MODE = 0o600


_now = time.time


def utc_timestamp(when: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, e.g. ``2024-05-01T12:34:56.789Z``."""
    global _last_second
    when = time.time() if when is None else when
    seconds = math.floor(when)
    micros = round((when - seconds) * 1_000_000)  # rounded like datetime.fromtimestamp, then cut to ms
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    cached_seconds, prefix = _last_second
    if cached_seconds != seconds:  # a batch of records mostly shares its second: format it once
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
        _last_second = (seconds, prefix)
    return f"{prefix}{micros // 1000:03d}Z"


_last_second: tuple[int, str] = (-1, "")  # (unix second, its formatted prefix), replaced as one tuple


@dataclass(kw_only=True, slots=True)  # not frozen: a frozen dataclass takes twice as long to make, per request
class AuditRecord:
    """One request in the audit trail; the field names are the JSON keys.

    ``outcome`` is the Alibaba error code, or ``"Success"``.  Absent values (no key for ListKeys, no access
    key for an unsigned request) are ``""`` (``None`` is taken as ``""``).  String fields are cut to
    ``MAX_FIELD_CHARS``.  Making a record is cheap (it happens on the request path); checking and
    formatting it happen in ``to_json``, on the writer thread.
    """

    time: float = field(default_factory=_now)  # unix seconds; written as ISO-8601 UTC
    request_id: str
    access_key_id: str
    source_ip: str
    action: str
    key_id: str = ""
    key_version_id: str = ""
    context_sha256: str = ""
    outcome: str
    http_status: int
    latency_ms: float

    def to_json(self) -> str:
        """The compact line, ASCII only: no raw newline or U+2028 can split it for a line-based reader.
        Written out field by field (each string through json's own escaping), in AUDIT_FIELDS order."""
        parts = ['{"time":"', utc_timestamp(self.time), '"']
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if value is None:
                value = ""
            elif not isinstance(value, str):
                raise TypeError(f"AuditRecord.{name} must be a str, not {type(value).__name__}")
            parts.append(f',"{name}":{_json_string(value[:MAX_FIELD_CHARS])}')
        latency = round(float(self.latency_ms), 3)
        parts.append(f',"http_status":{int(self.http_status)},"latency_ms":{_json_float(latency)}}}')
        return "".join(parts)


AUDIT_FIELDS = tuple(f.name for f in dataclasses.fields(AuditRecord))
_STR_FIELDS = tuple(f.name for f in dataclasses.fields(AuditRecord) if f.type == "str")
if AUDIT_FIELDS != ("time", *_STR_FIELDS, "http_status", "latency_ms"):  # the order to_json writes them in
    raise RuntimeError(f"AuditRecord fields changed: update to_json ({AUDIT_FIELDS})")


def _json_float(value: float) -> str:
    return float.__repr__(value) if math.isfinite(value) else json.dumps(value)  # as json.dumps writes it


_LOG_RECORD = {"levelno": logging.INFO, "levelname": "INFO"}


class _PrivateFileMixin:
    """Open the log file 0600 and append-only, also when a handler reopens it after a rotation."""

    baseFilename: str
    errors: str | None

    def _open(self) -> IO[str]:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, FILE_MODE)  # a pre-existing file with looser permissions
            return os.fdopen(fd, "a", encoding="utf-8", errors=self.errors)
        except BaseException:
            os.close(fd)
            raise

    def handleError(self, record: logging.LogRecord) -> None:
        # Into the server log rather than a bare traceback on stderr; the record is the audit line itself.
        error = sys.exc_info()[1]
        log.error("cannot write the audit log %s: %s", self.baseFilename, error)


class _RotatingFile(_PrivateFileMixin, logging.handlers.RotatingFileHandler):
    pass


class _WatchedFile(_PrivateFileMixin, logging.handlers.WatchedFileHandler):
    pass


class AuditLog:
    """Append audit records to ``path`` from a background thread; see the module docstring for rotation.

    ``max_bytes=0`` never rotates (the mode for several processes, with logrotate); otherwise rotate at
    ``max_bytes`` keeping ``backup_count`` (at least 1) old files.  ``handler`` is the file handler.

    The request path only appends the record to a deque.  The writer wakes every WRITE_INTERVAL_S and
    writes what has gathered in one go: waking it for each record (a Queue's condition variable) made every
    request that released the GIL wait for the writer to run, which doubled the CPU per request, and a
    logging call per record (a LogRecord, a stat, a write) cost a fifth of a request's CPU.
    """

    def __init__(self, path: Path | str, max_bytes: int = 0, backup_count: int = 5, *,
                 queue_size: int = DEFAULT_QUEUE_SIZE):
        if max_bytes < 0:
            raise ValueError("max_bytes must be 0 (never rotate) or positive")
        if max_bytes > 0 and backup_count < 1:
            raise ValueError("rotating (max_bytes > 0) needs backup_count >= 1")
        if queue_size < 1:
            raise ValueError("queue_size must be positive (the queue is bounded)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped = 0
        self._burst = 0  # records dropped since the last one that got through
        self._closed = False
        self._queue_size = queue_size
        self._pending: collections.deque[AuditRecord] = collections.deque()
        self._unwritten = 0  # queued or being written (flush waits for 0)
        self._lock = threading.Lock()  # held only for non-blocking work: record() must never wait
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self.handler: logging.FileHandler
        if max_bytes > 0:
            self.handler = _RotatingFile(self.path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        else:
            self.handler = _WatchedFile(self.path, encoding="utf-8")
        self._thread = threading.Thread(target=self._write_loop, name="hsmkms-audit-writer", daemon=True)
        self._thread.start()

    def record(self, rec: AuditRecord) -> None:
        """Queue ``rec`` for writing; never blocks.  A full queue or a closed log drops and counts it."""
        with self._lock:
            closed = self._closed
            queued = not closed and len(self._pending) < self._queue_size
            if queued:
                self._unwritten += 1
                self._pending.append(rec)
                warn_drop, ended_burst, self._burst = False, self._burst, 0
            else:
                self.dropped += 1
                self._burst += 1
                warn_drop, ended_burst = self._burst == 1, 0
        if warn_drop:
            reason = "is closed" if closed else f"queue is full ({self._queue_size} records)"
            log.warning("audit log %s %s: dropping audit records", self.path, reason)
        if ended_burst:
            log.warning("audit log %s: writing again after dropping %d record(s)", self.path, ended_burst)

    def _write_loop(self) -> None:
        while True:
            self._wake.wait(WRITE_INTERVAL_S)
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft() for _ in range(len(self._pending))]
                try:
                    self._write(batch)
                finally:
                    with self._idle:
                        with self._lock:
                            self._unwritten -= len(batch)
                        self._idle.notify_all()
            if self._closed and not self._pending:
                return

    def _write(self, batch: list[AuditRecord]) -> None:
        """Format ``batch`` and hand it to the file handler: line by line when the handler rotates by size
        (so that no file grows past max_bytes), else as one write of whole lines (one stat, one syscall)."""
        lines = []
        for rec in batch:
            try:
                lines.append(rec.to_json())
            except Exception as exc:  # one bad record must not stop the trail
                log.error("audit record %s not written: %s", getattr(rec, "request_id", "?"), exc)
        chunks = lines if isinstance(self.handler, _RotatingFile) else ["\n".join(lines)] if lines else []
        for chunk in chunks:
            self.handler.handle(logging.makeLogRecord({"msg": chunk, **_LOG_RECORD}))

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until every queued record is written; False if ``timeout`` seconds were not enough."""
        self._wake.set()
        with self._idle:
            return self._idle.wait_for(lambda: self._unwritten == 0, timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Write what is queued, stop the writer and close the file; later records are dropped.

        Returns False if the writer did not finish within ``timeout`` seconds (the file then stays open to
        the still-running daemon thread).  Calling it again is harmless.
        """
        with self._lock:
            self._closed = True  # from here on record() drops
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("audit log %s: writer did not finish within %s s, %d record(s) not written", self.path,
                        timeout, len(self._pending))
            return False
        self.handler.close()
        return True

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
