"""The audit trail: the record's fixed shape, the non-blocking writer, rotation, permissions, shutdown."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import re
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hsmkms.audit import (
    AUDIT_FIELDS,
    MAX_FIELD_CHARS,
    AuditLog,
    AuditRecord,
    utc_timestamp,
)
from hsmkms.service.context import context_digest
from tests.equivalence import EQUIVALENCE, outcome

# The documented set, spelled out: adding a field to AuditRecord must be a deliberate change to this test.
DOCUMENTED_KEYS = {
    "time", "request_id", "access_key_id", "source_ip", "action", "key_id", "key_version_id",
    "context_sha256", "outcome", "http_status", "latency_ms",
}
TIME_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")
WAIT = 5.0  # upper bound of every wait; the happy paths take milliseconds


def make_record(n: int = 0, **overrides) -> AuditRecord:
    values = dict(
        request_id=f"req-{n:06d}",
        access_key_id="LTAI5tExampleAccessKey",
        source_ip="10.0.0.7",
        action="GenerateDataKey",
        key_id="0b4bd9bc-6c3e-4d2f-9a4e-1c1b2b1a7e10",
        key_version_id="2a1f3c4d-0000-4000-8000-000000000001",
        context_sha256=context_digest(b'{"app":"x"}'),
        outcome="Success",
        http_status=200,
        latency_ms=1.23456,
    )
    values.update(overrides)
    return AuditRecord(**values)


def read_lines(*paths: Path) -> list[dict]:
    lines: list[dict] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert text == "" or text.endswith("\n"), f"{path} ends in a partial line"
        lines.extend(json.loads(line) for line in text.splitlines())
    return lines


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.log"


@pytest.fixture
def open_logs():
    """Close every AuditLog a test opened, even when the test fails, so no writer thread outlives it."""
    logs: list[AuditLog] = []
    yield logs
    for audit in logs:
        audit.close(timeout=WAIT)


def opened(logs: list[AuditLog], *args, **kwargs) -> AuditLog:
    audit = AuditLog(*args, **kwargs)
    logs.append(audit)
    return audit


class Gate:
    """Stalls the writer: the first emit() signals ``entered`` and waits for ``release`` (bounded)."""

    def __init__(self, audit: AuditLog, monkeypatch: pytest.MonkeyPatch):
        self.entered = threading.Event()
        self.release = threading.Event()
        original = audit.handler.emit

        def emit(record: logging.LogRecord) -> None:
            self.entered.set()
            self.release.wait(WAIT)
            original(record)

        monkeypatch.setattr(audit.handler, "emit", emit)


# --- the record ------------------------------------------------------------------------------------------


def test_record_has_exactly_the_documented_fields():
    assert {f.name for f in dataclasses.fields(AuditRecord)} == DOCUMENTED_KEYS
    assert set(AUDIT_FIELDS) == DOCUMENTED_KEYS
    line = make_record().to_json()
    assert set(json.loads(line)) == DOCUMENTED_KEYS


def test_record_has_no_place_for_secrets():
    with pytest.raises(TypeError):
        make_record(plaintext="c2VjcmV0")
    with pytest.raises(TypeError):
        make_record(access_key_secret="s3cr3t")


def test_record_values_and_compact_form():
    rec = make_record(latency_ms=1.23456, http_status="404", outcome="Forbidden.KeyNotFound")
    data = json.loads(rec.to_json())
    assert data["latency_ms"] == 1.235
    assert data["http_status"] == 404
    assert data["outcome"] == "Forbidden.KeyNotFound"
    assert data["context_sha256"] == hashlib.sha256(b'{"app":"x"}').hexdigest()
    assert TIME_FORMAT.match(data["time"])
    assert " " not in rec.to_json()
    assert list(data) == list(AUDIT_FIELDS)


def test_absent_values_are_empty_strings():
    rec = AuditRecord(request_id="r", access_key_id="", source_ip="127.0.0.1", action="ListKeys",
                      key_id=None, outcome="Success", http_status=200, latency_ms=0)
    data = json.loads(rec.to_json())
    assert data["key_id"] == data["key_version_id"] == data["context_sha256"] == ""
    with pytest.raises(TypeError, match="action must be a str"):
        make_record(action=b"Decrypt").to_json()


def test_client_controlled_text_cannot_split_or_bloat_a_line():
    rec = make_record(action="Decrypt\n{\"forged\":1}\u2028\r" + "x" * 100_000)
    line = rec.to_json()
    assert len(line.splitlines()) == 1
    assert line.isascii()
    assert len(json.loads(line)["action"]) == MAX_FIELD_CHARS


def test_utc_timestamp():
    assert utc_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert utc_timestamp(1_700_000_000.9876) == "2023-11-14T22:13:20.987Z"
    assert TIME_FORMAT.match(utc_timestamp())


# The line and the timestamp used to be made with json.dumps and datetime; the faster versions must give the
# same text for every record, and raise the same errors.


def reference_line(rec: AuditRecord) -> str:
    values = {"time": reference_timestamp(rec.time)}
    for name in AUDIT_FIELDS[1:-2]:
        value = getattr(rec, name)
        if value is None:
            value = ""
        elif not isinstance(value, str):
            raise TypeError(f"AuditRecord.{name} must be a str, not {type(value).__name__}")
        values[name] = value[:MAX_FIELD_CHARS]
    values["http_status"] = int(rec.http_status)
    values["latency_ms"] = round(float(rec.latency_ms), 3)
    return json.dumps(values, separators=(",", ":"), ensure_ascii=True)


def reference_timestamp(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


any_text = st.one_of(st.text(max_size=40), st.text(st.characters(codec=None), max_size=300), st.none())
instants = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)  # 1970 .. 2100


@EQUIVALENCE
@given(any_text, any_text, any_text, any_text, st.one_of(any_text, st.binary(max_size=4)), instants,
       st.one_of(st.integers(100, 599), st.sampled_from(["404", 200.0])),
       st.one_of(st.floats(allow_nan=False), st.integers(0, 10**6), st.sampled_from([float("inf"), -0.0])))
@example("r", "", "127.0.0.1", "\ud800\u2028\n\"\\x7f", "k", 1_700_000_000.9995, 200, 1e-7)
@example("r", "AK", "::1", "ListKeys", None, 86399.9999999, 200, 12345.6785)
def test_line_same_as_json_dumps(request_id, access_key_id, source_ip, action, key_id, when, status, latency):
    rec = AuditRecord(time=when, request_id=request_id, access_key_id=access_key_id, source_ip=source_ip,
                      action=action, key_id=key_id, outcome="Success", http_status=status, latency_ms=latency)
    assert outcome(rec.to_json) == outcome(reference_line, rec)


@EQUIVALENCE
@given(st.lists(instants, min_size=1, max_size=20))
def test_timestamps_same_as_datetime_in_any_order(moments):
    # Consecutive instants in one second, and a second seen again after another: the cached prefix is right.
    moments = moments + [m + 0.25 for m in moments] + moments
    assert [utc_timestamp(m) for m in moments] == [reference_timestamp(m) for m in moments]


def test_context_digest():
    assert context_digest(None) == ""
    assert context_digest(b"") == ""
    assert context_digest(b"{}") == ""  # the canonical empty context is "no context"
    digest = context_digest(b'{"a":"1"}')
    assert digest == hashlib.sha256(b'{"a":"1"}').hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


# --- writing ------------------------------------------------------------------------------------------------


def test_lines_are_json_with_exactly_the_documented_keys(audit_path, open_logs):
    audit = opened(open_logs, audit_path)
    for n in range(3):
        audit.record(make_record(n))
    assert audit.flush(WAIT)
    lines = read_lines(audit_path)
    assert [line["request_id"] for line in lines] == ["req-000000", "req-000001", "req-000002"]
    assert all(set(line) == DOCUMENTED_KEYS for line in lines)


def test_concurrent_records_give_exactly_one_line_each(audit_path, open_logs):
    audit = opened(open_logs, audit_path)
    threads, per_thread = 16, 250
    start = threading.Barrier(threads)

    def worker(t: int) -> None:
        start.wait(WAIT)
        for i in range(per_thread):
            audit.record(make_record(t * per_thread + i))

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert audit.flush(WAIT)
    ids = [line["request_id"] for line in read_lines(audit_path)]
    assert len(ids) == threads * per_thread
    assert set(ids) == {f"req-{n:06d}" for n in range(threads * per_thread)}
    assert audit.dropped == 0


def test_audit_lines_do_not_reach_the_root_logger(audit_path, open_logs, caplog):
    caplog.set_level(logging.DEBUG)
    audit = opened(open_logs, audit_path)
    audit.record(make_record(42))
    assert audit.flush(WAIT)
    assert "req-000042" in audit_path.read_text()
    assert not any("req-000042" in r.getMessage() for r in caplog.records)


def test_several_processes_append_whole_lines_to_one_file(audit_path):
    # Two workers sharing one never-rotated file, as gunicorn would run them.
    script = textwrap.dedent(f"""
        import sys
        from hsmkms.audit import AuditLog, AuditRecord
        audit = AuditLog({str(audit_path)!r}, max_bytes=0)
        for i in range(300):
            audit.record(AuditRecord(request_id=f"{{sys.argv[1]}}-{{i}}", access_key_id="a" * 200,
                                     source_ip="::1", action="Encrypt", outcome="Success",
                                     http_status=200, latency_ms=0.5))
        assert audit.close(timeout=10)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("w1", "w2", "w3")]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    ids = [line["request_id"] for line in read_lines(audit_path)]
    assert sorted(ids) == sorted(f"{w}-{i}" for w in ("w1", "w2", "w3") for i in range(300))


# --- rotation -------------------------------------------------------------------------------------------


def test_rotation_keeps_whole_lines_in_numbered_backups(audit_path, open_logs, loose_umask):
    max_bytes = 2000
    audit = opened(open_logs, audit_path, max_bytes=max_bytes, backup_count=50)
    count = 100
    for n in range(count):
        audit.record(make_record(n))
    assert audit.flush(WAIT)
    backups = sorted(audit_path.parent.glob("audit.log.*"), key=lambda p: int(p.suffix[1:]))
    assert len(backups) >= 5
    assert [p.suffix for p in backups] == [f".{i}" for i in range(1, len(backups) + 1)]
    for path in [audit_path, *backups]:
        assert path.stat().st_size <= max_bytes
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Oldest backup first: the highest number holds the first records.
    ids = [line["request_id"] for line in read_lines(*reversed(backups), audit_path)]
    assert ids == [f"req-{n:06d}" for n in range(count)]


def test_rotation_drops_the_oldest_beyond_backup_count(audit_path, open_logs):
    audit = opened(open_logs, audit_path, max_bytes=1000, backup_count=2)
    for n in range(60):
        audit.record(make_record(n))
    assert audit.flush(WAIT)
    assert sorted(p.name for p in audit_path.parent.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    ids = [line["request_id"] for line in read_lines(audit_path.with_suffix(".log.2"),
                                                     audit_path.with_suffix(".log.1"), audit_path)]
    assert ids[-1] == "req-000059"
    assert ids == sorted(ids) and len(ids) < 60


def test_never_rotating_log_follows_an_external_rotation(audit_path, open_logs, loose_umask):
    audit = opened(open_logs, audit_path, max_bytes=0)
    audit.record(make_record(1))
    assert audit.flush(WAIT)
    rotated = audit_path.with_name("audit.log.1")
    audit_path.rename(rotated)  # what logrotate does (without copytruncate)
    audit.record(make_record(2))
    assert audit.flush(WAIT)
    assert [line["request_id"] for line in read_lines(rotated)] == ["req-000001"]
    assert [line["request_id"] for line in read_lines(audit_path)] == ["req-000002"]
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600


def test_never_rotating_log_grows_past_any_size(audit_path, open_logs):
    audit = opened(open_logs, audit_path, max_bytes=0)
    for n in range(200):
        audit.record(make_record(n))
    assert audit.flush(WAIT)
    assert list(audit_path.parent.iterdir()) == [audit_path]
    assert len(read_lines(audit_path)) == 200


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_bytes=-1), "max_bytes"),
        (dict(max_bytes=1000, backup_count=0), "backup_count"),
        (dict(queue_size=0), "queue_size"),
    ],
)
def test_invalid_settings(audit_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        AuditLog(audit_path, **kwargs)
    assert not audit_path.exists()


# --- permissions -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [0, 1000])
def test_file_is_created_private(audit_path, open_logs, loose_umask, max_bytes):
    opened(open_logs, audit_path, max_bytes=max_bytes)
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600


def test_existing_loose_file_is_tightened_and_appended_to(audit_path, open_logs):
    audit_path.parent.mkdir()
    audit_path.write_text('{"earlier":"line"}\n')
    audit_path.chmod(0o644)
    audit = opened(open_logs, audit_path)
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600
    audit.record(make_record(1))
    assert audit.flush(WAIT)
    assert read_lines(audit_path)[0] == {"earlier": "line"}
    assert read_lines(audit_path)[1]["request_id"] == "req-000001"


# --- never blocking, flush and close ------------------------------------------------------------------------


def test_record_does_not_block_when_the_writer_is_stalled(audit_path, open_logs, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="hsmkms.audit")
    audit = opened(open_logs, audit_path, queue_size=1)
    gate = Gate(audit, monkeypatch)
    audit.record(make_record(1))
    assert gate.entered.wait(WAIT)  # the writer holds record 1 and is stuck on the "disk"

    def burst() -> None:
        for n in range(2, 6):  # 2 fills the queue, 3..5 find it full
            audit.record(make_record(n))

    caller = threading.Thread(target=burst)
    started = time.monotonic()
    caller.start()
    caller.join(WAIT)
    assert not caller.is_alive(), "record() blocked on a stalled writer"
    assert time.monotonic() - started < 1.0
    assert audit.dropped == 3
    assert not audit.flush(timeout=0.05)  # still stalled: flush gives up in time

    drops = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(drops) == 1  # one warning for the whole burst

    gate.release.set()
    assert audit.flush(WAIT)
    assert [line["request_id"] for line in read_lines(audit_path)] == ["req-000001", "req-000002"]

    audit.record(make_record(6))  # ends the burst
    assert any("after dropping 3 record(s)" in r.getMessage() for r in caplog.records)
    assert audit.flush(WAIT)
    assert read_lines(audit_path)[-1]["request_id"] == "req-000006"
    assert audit.dropped == 3


def test_each_burst_warns_once(audit_path, open_logs, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="hsmkms.audit")
    audit = opened(open_logs, audit_path, queue_size=1)
    for burst in range(2):
        gate = Gate(audit, monkeypatch)  # wraps the previous (released) gate: stalls the next emit
        audit.record(make_record(10 * burst))
        assert gate.entered.wait(WAIT)
        for n in range(1, 4):  # one queued, two dropped
            audit.record(make_record(10 * burst + n))
        gate.release.set()
        assert audit.flush(WAIT)
        audit.record(make_record(10 * burst + 9))  # gets through: the burst is over
        assert audit.flush(WAIT)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("dropping audit records" in m for m in messages) == 2
    assert sum("after dropping 2 record(s)" in m for m in messages) == 2
    assert audit.dropped == 4
    ids = [line["request_id"] for line in read_lines(audit_path)]
    assert ids == ["req-000000", "req-000001", "req-000009", "req-000010", "req-000011", "req-000019"]


def test_close_writes_pending_records_and_stops(audit_path, monkeypatch):
    audit = AuditLog(audit_path, queue_size=10)
    gate = Gate(audit, monkeypatch)
    for n in range(5):
        audit.record(make_record(n))
    assert gate.entered.wait(WAIT)
    writer = audit._thread
    assert writer is not None and writer.name == "hsmkms-audit-writer"
    releaser = threading.Timer(0.05, gate.release.set)
    releaser.start()
    assert audit.close(WAIT)  # waits for the stalled writer to drain the queue
    releaser.join(WAIT)
    assert len(read_lines(audit_path)) == 5
    assert audit.handler.stream is None
    assert not writer.is_alive()
    assert audit.close(WAIT)  # idempotent


def test_record_after_close_is_dropped_and_counted(audit_path, caplog):
    caplog.set_level(logging.WARNING, logger="hsmkms.audit")
    audit = AuditLog(audit_path)
    audit.record(make_record(1))
    assert audit.close(WAIT)
    audit.record(make_record(2))
    audit.record(make_record(3))
    assert audit.dropped == 2
    assert [line["request_id"] for line in read_lines(audit_path)] == ["req-000001"]
    assert sum("is closed" in r.getMessage() for r in caplog.records) == 1


def test_close_gives_up_in_time_on_a_stalled_writer(audit_path, monkeypatch):
    audit = AuditLog(audit_path, queue_size=1)
    gate = Gate(audit, monkeypatch)
    audit.record(make_record(1))
    assert gate.entered.wait(WAIT)
    audit.record(make_record(2))  # the queue is full: not even the stop sentinel fits
    started = time.monotonic()
    assert audit.close(timeout=0.1) is False
    assert time.monotonic() - started < 1.0
    gate.release.set()
    assert audit.close(WAIT)  # a later close finishes the job
    assert [line["request_id"] for line in read_lines(audit_path)] == ["req-000001", "req-000002"]


def test_context_manager_closes(audit_path):
    with AuditLog(audit_path) as audit:
        audit.record(make_record(7))
    assert audit.handler.stream is None
    assert read_lines(audit_path)[0]["request_id"] == "req-000007"


def test_a_record_that_cannot_be_written_does_not_stop_the_trail(audit_path, open_logs, caplog):
    caplog.set_level(logging.ERROR, logger="hsmkms.audit")
    audit = opened(open_logs, audit_path)
    audit.record(make_record(1, action=b"not text"))
    audit.record(make_record(2))
    assert audit.flush(WAIT)
    assert [line["request_id"] for line in read_lines(audit_path)] == ["req-000002"]
    assert any("req-000001 not written" in r.getMessage() for r in caplog.records)
