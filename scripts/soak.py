"""make soak: load with verification, and crash consistency, against a live ``hsmkms serve``.

Run from the repository root:  .venv/bin/python scripts/soak.py [--clients 64] [--seconds 60] [--crashes K]

What it does, every step bounded in time and count, on 127.0.0.1 only:

1. A fresh deployment in a temporary folder (``tests.e2e.server.provision_server``: its own SoftHSM token,
   metadata database, access key and ``alias/dev``), served by ``hsmkms serve`` with 2 workers.
2. ``--clients`` threads, each with one of the official SDKs (the Tea SDK signing ACS3-HMAC-SHA256, the Tea
   SDK signing HMAC-SHA1, the legacy aliyun-python-sdk-core), run a weighted mix of GenerateDataKey,
   Encrypt, Decrypt, ReEncrypt, CreateKey (+ CreateAlias) and CreateKeyVersion for ``--seconds`` of load
   and at most ``--max-requests`` requests in all.  Every blob acknowledged with a 200 is recorded with
   the plaintext and context it must open to, in memory and in a JSON-lines journal.  Decrypts check the
   answer at once.
3. With ``--crashes K``: at K random moments the whole server process group is killed with SIGKILL; the
   clients park, ``hsmkms doctor`` runs before and after ``hsmkms doctor --repair``, the server restarts,
   every blob, key and key version acknowledged so far is checked, and the load resumes.
4. At the end the server is stopped with SIGTERM (it must exit 0), ``hsmkms doctor`` must find the token and
   the metadata consistent, the server is started again and every recorded blob is decrypted through the
   SDKs and compared (plaintext, KeyId, KeyVersionId); every acknowledged key and version must still exist.

It prints a summary, writes ``--json-out`` (default var/soak/results.json; the server log is copied next to
it) and exits 1 when anything is wrong: a 5xx, a lost or mismatched blob, a lost key or version, doctor
inconsistent after repair, a non-zero exit on SIGTERM, an unexpected error (the workload only sends valid
requests), a transport error while the server was up, an error line in the server log.  Exit 2: the soak
itself could not run.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from darabonba.core import DaraCore  # noqa: E402
from darabonba.exceptions import UnretryableException  # noqa: E402

from tests.e2e.sdk import ApiError, LegacySdk, TeaSdk  # noqa: E402
from tests.e2e.server import LiveServer, provision_server  # noqa: E402

OUT = ROOT / "var" / "soak"
SDK_KINDS = ("tea-v3", "tea-v2", "legacy")
MAX_PLAINTEXT_BYTES = 6 * 1024
SAMPLES = 25  # at most this many examples of each kind of problem in the report
TRANSPORT_CODES = {"SDK.HttpError"}  # the legacy SDK's code for "no HTTP response" (refused, reset, timeout)
PARK_TIMEOUT_S = 60  # a client's request in flight when the server dies fails at once; 60 s is generous
JOIN_TIMEOUT_S = 60  # longer than the SDKs' 30 s read timeout
GROUP_GONE_TIMEOUT_S = 10

# The mix: (action, weight).
WORKLOAD = (
    ("GenerateDataKey", 30),
    ("Encrypt", 25),
    ("Decrypt", 22),
    ("ReEncrypt", 12),
    ("CreateKey", 4),
    ("CreateKeyVersion", 7),
)
CREATIONS = {"CreateKey", "CreateKeyVersion"}
INITIAL_KEYS = 3  # created before the load, besides alias/dev


@dataclass
class Options:
    clients: int = 64
    seconds: float = 60.0
    max_requests: int = 1_000_000
    crashes: int = 0
    seed: int | None = None
    json_out: Path = OUT / "results.json"
    journal: Path | None = None  # default: blobs.jsonl next to json_out
    workers: int = 2
    verify_threads: int = 16
    verify_timeout: float = 600.0  # per verification pass
    work_dir: Path | None = None  # where the temporary deployment goes (default: the system's temp dir)
    keep: bool = False  # keep the deployment even when everything passed
    quiet: bool = False


# --- random inputs -------------------------------------------------------------------------------------

ASCII = string.ascii_letters + string.digits + " .,;:-_!?'\"()[]{}<>@#$^*~`|\\/"
ALPHABETS = (
    "&=+%?#/ ",  # significant in URLs and forms
    "\t\n\r",
    "äöüßÄÖÜéèêçñåøæœ€£¥©®°±µ¶§",
    "αβγδεζηθλμπσφωΩДЖЗИЛПФЦЧШЩЫЭЮЯжзилпфцчшщыэюя",
    "אבגדהוזחטיכלמנסעפצקרשת" + "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "中文字符测试数据密钥管理服务加密解密日本語のテキスト한국어텍스트",
    "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘🔑🔒🔐🗝",  # four UTF-8 bytes each
    "\u0301\u0308\u200d\u200b\ufeff\u00a0",  # combining marks, zero-width (non-)joiners, BOM, NBSP
)


def random_text(rng: random.Random, max_bytes: int, min_chars: int = 1) -> str:
    """A string of at most ``max_bytes`` UTF-8 bytes mixing ASCII with a few other scripts."""
    pools = [ASCII, *rng.sample(ALPHABETS, rng.randint(0, 3))]
    pieces: list[str] = []
    size = 0
    while size < max_bytes:
        piece = "".join(rng.choices(rng.choice(pools), k=16))
        pieces.append(piece)
        size += len(piece.encode("utf-8"))
    text = "".join(pieces).encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    if len(text) < min_chars:
        text += "x" * (min_chars - len(text))
    return text


def random_plaintext(rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.55:
        size = rng.randint(1, 64)
    elif draw < 0.85:
        size = rng.randint(65, 1024)
    elif draw < 0.97:
        size = rng.randint(1025, MAX_PLAINTEXT_BYTES - 1)
    else:
        size = MAX_PLAINTEXT_BYTES  # the limit itself
    return random_text(rng, size)


def random_context(rng: random.Random) -> dict[str, str] | None:
    """None (the parameter is left out), {} or one to four pairs of non-ASCII strings."""
    draw = rng.random()
    if draw < 0.25:
        return None
    if draw < 0.35:
        return {}
    return {random_text(rng, rng.randint(1, 24)): random_text(rng, rng.randint(0, 48), min_chars=0)
            for _ in range(rng.randint(1, 4))}


def shuffled(rng: random.Random, context: dict[str, str]) -> dict[str, str]:
    """The same map in another order: a context is compared as a map."""
    return dict(rng.sample(list(context.items()), len(context)))


def context_params(rng: random.Random, context: dict[str, str] | None, name: str = "EncryptionContext") -> dict:
    """How a recorded context is given back: left out when it was left out (or sometimes when it was {})."""
    if context is None or (not context and rng.random() < 0.5):
        return {}
    return {name: shuffled(rng, context)}


# --- records -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BlobRecord:
    seq: int
    op: str
    key_id: str
    key_version_id: str
    blob: str
    plaintext: str
    context: dict[str, str] | None  # None: the request had no EncryptionContext
    client: int
    sdk: str


class Ledger:
    """Every acknowledged blob, in memory and appended to a JSON-lines journal."""

    def __init__(self, journal: Path):
        journal.parent.mkdir(parents=True, exist_ok=True)
        self.path = journal
        self._file = open(journal, "w", encoding="utf-8")  # closed by close()
        os.chmod(journal, 0o600)
        self._lock = threading.Lock()
        self.records: list[BlobRecord] = []

    def add(self, **fields) -> BlobRecord:
        with self._lock:
            record = BlobRecord(seq=len(self.records), **fields)
            self.records.append(record)
            self._file.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
            self._file.flush()
        return record

    def pick(self, rng: random.Random) -> BlobRecord | None:
        records = self.records
        return records[rng.randrange(len(records))] if records else None

    def snapshot(self) -> list[BlobRecord]:
        with self._lock:
            return list(self.records)

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class PoolKey:
    key_id: str
    arn: str
    alias: str | None = None
    versions: list[str] = field(default_factory=list)


class KeyPool:
    """The keys the load uses: alias/dev's key, a few made before the load, and every acknowledged CreateKey."""

    def __init__(self):
        self._lock = threading.Lock()
        self.keys: list[PoolKey] = []

    def add(self, key: PoolKey) -> None:
        with self._lock:
            self.keys.append(key)

    def add_version(self, key: PoolKey, version_id: str) -> None:
        with self._lock:
            key.versions.append(version_id)

    def choose(self, rng: random.Random) -> PoolKey:
        keys = self.keys
        return keys[rng.randrange(len(keys))]

    @staticmethod
    def reference(rng: random.Random, key: PoolKey) -> str:
        """A KeyId parameter naming ``key``: its id, its alias, its ARN or its alias's ARN."""
        draw = rng.random()
        if key.alias and draw < 0.25:
            return key.alias
        if key.alias and draw < 0.35:
            return key.arn.rsplit(":", 1)[0] + ":" + key.alias
        if draw < 0.5:
            return key.arn
        return key.key_id

    def snapshot(self) -> list[tuple[str, list[str]]]:
        with self._lock:
            return [(key.key_id, list(key.versions)) for key in self.keys]


# --- talking to the server -----------------------------------------------------------------------------


def make_client(kind: str, live: LiveServer):
    if kind == "tea-v3":
        return TeaSdk(live.endpoint, live.access_key_id, live.access_key_secret)
    if kind == "tea-v2":
        return TeaSdk(live.endpoint, live.access_key_id, live.access_key_secret, signature_algorithm="v2")
    return LegacySdk(live.endpoint, live.access_key_id, live.access_key_secret)


def close_idle_connections() -> None:
    """Close the SDKs' idle keep-alive connections: gunicorn's graceful stop waits for open connections.

    The Tea SDK keeps one requests session per endpoint for the whole process (``DaraCore._sessions``); the
    legacy SDK's connections go with its client objects.  Only called while no request is in flight.
    """
    sessions = getattr(DaraCore, "_sessions", None)
    if isinstance(sessions, dict):
        for session in list(sessions.values()):
            session.close()
        sessions.clear()
    gc.collect()


def classify(exc: BaseException) -> tuple[str, int | None, str, str]:
    """(kind, HTTP status, code, message); kind: ``api`` (an error response), ``transport`` (no response at
    all: refused, reset, timed out) or ``client`` (the SDK refused or failed on its side)."""
    if isinstance(exc, ApiError):
        if exc.status is None:
            return ("transport" if exc.code in TRANSPORT_CODES else "client"), None, exc.code, exc.message
        return "api", exc.status, exc.code, exc.message
    if isinstance(exc, UnretryableException):  # the Tea SDK: no response (it does not retry by default)
        inner = getattr(exc, "inner_exception", None) or exc
        return "transport", None, f"Tea.{type(inner).__name__}", str(inner)
    if isinstance(exc, json.JSONDecodeError):
        # The legacy SDK hands back whatever body came with a 2xx status; when the server dies between the
        # status line and the body, that is b'' (its HTTP library does not enforce Content-Length).  A
        # response that did not arrive whole is no response: never acknowledged, counted as a transport error.
        return "transport", None, "TruncatedResponse", str(exc)
    return "client", None, type(exc).__name__, str(exc)


class Stats:
    """Requests and their outcomes, shared by threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = 0
        self.ok: Counter = Counter()
        self.by_action: Counter = Counter()
        self.errors_by_code: Counter = Counter()
        self.errors_by_status: Counter = Counter()
        self.status_5xx = 0
        self.transport_expected = 0
        self.transport_unexpected = 0
        self.transport_by_code: Counter = Counter()
        self.samples: list[dict] = []
        self.latency: dict[str, list[float]] = defaultdict(list)

    def success(self, action: str, seconds: float) -> None:
        with self._lock:
            self.requests += 1
            self.by_action[action] += 1
            self.ok[action] += 1
            self.latency[action].append(seconds)

    def failure(self, action: str, kind: str, status: int | None, code: str, message: str,
                expected_transport: bool = False, detail: str = "") -> None:
        with self._lock:
            self.requests += 1
            self.by_action[action] += 1
            if kind == "transport":
                self.transport_by_code[code] += 1
                if expected_transport:
                    self.transport_expected += 1
                    return
                self.transport_unexpected += 1
            else:
                self.errors_by_code[code] += 1
                self.errors_by_status[str(status)] += 1
                if status is not None and status >= 500:
                    self.status_5xx += 1
            if len(self.samples) < SAMPLES:
                self.samples.append({"action": action, "kind": kind, "status": status, "code": code,
                                     "message": message[:500], "detail": detail, "time": iso_now()})

    def report(self) -> dict:
        with self._lock:
            every = sorted(x for values in self.latency.values() for x in values)
            return {
                "requests": self.requests,
                "ok": sum(self.ok.values()),
                "by_action": dict(self.by_action),
                "ok_by_action": dict(self.ok),
                "errors_by_code": dict(self.errors_by_code),
                "errors_by_status": dict(self.errors_by_status),
                "status_5xx": self.status_5xx,
                "transport_errors_expected": self.transport_expected,
                "transport_errors_unexpected": self.transport_unexpected,
                "transport_errors_by_code": dict(self.transport_by_code),
                "latency_ms": percentiles(every),
                "latency_ms_by_action": {a: percentiles(sorted(v)) for a, v in self.latency.items()},
                "error_samples": list(self.samples),
            }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(values[-1] * 1000, 2)}


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Exhausted(Exception):
    """The request budget (--max-requests) is spent."""


class Gate:
    """Where client threads park between two requests while the server is down and being checked."""

    def __init__(self, members: int):
        self._cond = threading.Condition()
        self._closed = False
        self._parked = 0
        self._members = members

    def checkpoint(self) -> None:
        with self._cond:
            if not self._closed:
                return
            self._parked += 1
            self._cond.notify_all()
            while self._closed:
                self._cond.wait()
            self._parked -= 1

    def leave(self) -> None:
        with self._cond:
            self._members -= 1
            self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._parked >= self._members, timeout)

    def open(self) -> None:
        with self._cond:
            self._closed = False
            self._cond.notify_all()

    @property
    def members(self) -> int:
        with self._cond:
            return self._members


# --- the workload --------------------------------------------------------------------------------------


class Workload:
    def __init__(self, live: LiveServer, opts: Options, seed: int, ledger: Ledger, pool: KeyPool):
        self.live = live
        self.opts = opts
        self.seed = seed
        self.ledger = ledger
        self.pool = pool
        self.stats = Stats()
        self.gate = Gate(opts.clients)
        self.stop = threading.Event()
        self.server_up = True
        self.generation = 0  # +1 at every kill: a transport error of a request begun before it is expected
        self._budget_lock = threading.Lock()
        self._budget = opts.max_requests
        self.in_flight: list[str | None] = [None] * opts.clients
        self.last_failure: list[tuple | None] = [None] * opts.clients
        self._lock = threading.Lock()
        self.inline: Counter = Counter()  # checks of answers made during the load
        self.inline_problems: list[dict] = []
        self.client_exceptions: list[str] = []
        self.keys_created = 0
        self.versions_created = 0
        self.aliases_created = 0

    # -- plumbing --

    def _take(self) -> None:
        with self._budget_lock:
            if self._budget <= 0:
                raise Exhausted
            self._budget -= 1

    def call(self, sdk, index: int, action: str, **params) -> dict | None:
        """One request; the body of a 200, or None after counting the failure."""
        self._take()
        generation = self.generation
        self.in_flight[index] = action
        started = time.perf_counter()
        try:
            body = sdk.call(action, **params)
        except Exception as exc:  # every failure is classified and counted
            kind, status, code, message = self.last_failure[index] = classify(exc)
            expected = kind == "transport" and (not self.server_up or generation != self.generation)
            self.stats.failure(action, kind, status, code, message, expected, detail=f"client {index} {sdk.name}")
            if kind == "transport":
                time.sleep(0.05)  # the server is down or restarting: do not spin
            return None
        finally:
            self.in_flight[index] = None
        self.stats.success(action, time.perf_counter() - started)
        return body

    def problem(self, what: str, **details) -> None:
        with self._lock:
            self.inline[what] += 1
            if len(self.inline_problems) < SAMPLES:
                self.inline_problems.append({"problem": what, **details})

    def check(self, what: str) -> None:
        with self._lock:
            self.inline[what] += 1

    # -- the client threads --

    def client(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:client:{index}")
        kind = SDK_KINDS[index % len(SDK_KINDS)]
        actions, weights = zip(*WORKLOAD, strict=True)
        try:
            sdk = make_client(kind, self.live)
            while True:
                self.gate.checkpoint()
                if self.stop.is_set():
                    return
                action = rng.choices(actions, weights)[0]
                try:
                    getattr(self, f"do_{action}")(sdk, index, rng)
                except Exhausted:
                    return
        except Exception:  # a bug in the soak itself: reported, never hidden
            with self._lock:
                self.client_exceptions.append(f"client {index} ({kind}):\n{traceback.format_exc()}")
        finally:
            self.gate.leave()

    def record(self, index: int, sdk, op: str, body: dict, plaintext: str, context: dict | None) -> None:
        self.ledger.add(op=op, key_id=body["KeyId"], key_version_id=body["KeyVersionId"],
                        blob=body["CiphertextBlob"], plaintext=plaintext, context=context, client=index,
                        sdk=sdk.name)

    def do_GenerateDataKey(self, sdk, index: int, rng: random.Random) -> None:
        key = self.pool.choose(rng)
        params = {"KeyId": self.pool.reference(rng, key)}
        draw = rng.random()
        if draw < 0.4:
            length = rng.randint(1, 1024)
            params["NumberOfBytes"] = length
            if rng.random() < 0.3:
                params["KeySpec"] = rng.choice(["AES_128", "AES_256"])  # NumberOfBytes wins
        elif draw < 0.7:
            params["KeySpec"] = rng.choice(["AES_128", "AES_256"])
            length = 16 if params["KeySpec"] == "AES_128" else 32
        else:
            length = 32
        context = random_context(rng)
        body = self.call(sdk, index, "GenerateDataKey", **params, **({} if context is None else
                                                                    {"EncryptionContext": context}))
        if body is None:
            return
        if body.get("KeyId") != key.key_id or len(base64.b64decode(body["Plaintext"])) != length:
            self.problem("GenerateDataKey answer wrong", expected_key=key.key_id, key=body.get("KeyId"),
                         expected_length=length, sdk=sdk.name)
        self.record(index, sdk, "GenerateDataKey", body, body["Plaintext"], context)

    def do_Encrypt(self, sdk, index: int, rng: random.Random) -> None:
        key = self.pool.choose(rng)
        plaintext = random_plaintext(rng)
        context = random_context(rng)
        body = self.call(sdk, index, "Encrypt", KeyId=self.pool.reference(rng, key), Plaintext=plaintext,
                         **({} if context is None else {"EncryptionContext": context}))
        if body is None:
            return
        if body.get("KeyId") != key.key_id:
            self.problem("Encrypt answered another key", expected_key=key.key_id, key=body.get("KeyId"))
        self.record(index, sdk, "Encrypt", body, plaintext, context)

    def do_Decrypt(self, sdk, index: int, rng: random.Random) -> None:
        source = self.ledger.pick(rng)
        if source is None:
            return self.do_Encrypt(sdk, index, rng)
        body = self.call(sdk, index, "Decrypt", CiphertextBlob=source.blob, **context_params(rng, source.context))
        if body is None:
            kind, status, code, message = self.last_failure[index]
            if kind != "transport":  # no response at all is counted as a transport error, not as a wrong answer
                self.problem("Decrypt of a recorded blob failed", seq=source.seq, status=status, code=code,
                             message=message[:300])
            return None
        self.check("decrypts checked")
        if (body.get("Plaintext"), body.get("KeyId"), body.get("KeyVersionId")) != (
                source.plaintext, source.key_id, source.key_version_id):
            self.problem("Decrypt answered a wrong plaintext or key", seq=source.seq, key=body.get("KeyId"),
                         version=body.get("KeyVersionId"), plaintext_matches=body.get("Plaintext") == source.plaintext)
        return None

    def do_ReEncrypt(self, sdk, index: int, rng: random.Random) -> None:
        source = self.ledger.pick(rng)
        if source is None:
            return self.do_GenerateDataKey(sdk, index, rng)
        destination = self.pool.choose(rng)
        context = random_context(rng)
        body = self.call(sdk, index, "ReEncrypt", CiphertextBlob=source.blob,
                         DestinationKeyId=self.pool.reference(rng, destination),
                         **context_params(rng, source.context, "SourceEncryptionContext"),
                         **({} if context is None else {"DestinationEncryptionContext": context}))
        if body is None:
            return None
        if body.get("KeyId") != destination.key_id:
            self.problem("ReEncrypt answered another key", expected_key=destination.key_id, key=body.get("KeyId"))
        self.record(index, sdk, "ReEncrypt", body, source.plaintext, context)
        return None

    def do_CreateKey(self, sdk, index: int, rng: random.Random) -> None:
        params = {"Description": random_text(rng, rng.randint(0, 64), min_chars=0)} if rng.random() < 0.5 else {}
        if rng.random() < 0.2:
            params["ProtectionLevel"] = rng.choice(["HSM", "SOFTWARE"])
        body = self.call(sdk, index, "CreateKey", **params)
        if body is None:
            return
        meta = body["KeyMetadata"]
        key = PoolKey(meta["KeyId"], meta["Arn"], versions=[meta["PrimaryKeyVersion"]])
        with self._lock:
            self.keys_created += 1
        if rng.random() < 0.35:
            alias = f"alias/soak-{uuid.UUID(int=rng.getrandbits(128))}"
            if self.call(sdk, index, "CreateAlias", AliasName=alias, KeyId=key.key_id) is not None:
                key.alias = alias
                with self._lock:
                    self.aliases_created += 1
        self.pool.add(key)

    def do_CreateKeyVersion(self, sdk, index: int, rng: random.Random) -> None:
        key = self.pool.choose(rng)
        body = self.call(sdk, index, "CreateKeyVersion", KeyId=self.pool.reference(rng, key))
        if body is None:
            return
        version = body["KeyVersion"]
        if version.get("KeyId") != key.key_id:
            self.problem("CreateKeyVersion answered another key", expected_key=key.key_id, key=version.get("KeyId"))
            return
        self.pool.add_version(key, version["KeyVersionId"])
        with self._lock:
            self.versions_created += 1


# --- verification --------------------------------------------------------------------------------------


def verify(live: LiveServer, records: list[BlobRecord], keys: list[tuple[str, list[str]]], opts: Options,
           stats: Stats, seed: int, label: str) -> dict:
    """Decrypt every record and compare; DescribeKey every key, DescribeKeyVersion every version.

    ``opts.verify_threads`` threads, one SDK each (the three kinds in turn), bounded by ``opts.verify_timeout``.
    """
    started = time.monotonic()
    deadline = started + opts.verify_timeout
    tasks: list[tuple] = [("blob", record) for record in records]
    tasks += [("key", key_id) for key_id, _ in keys]
    tasks += [("version", key_id, version) for key_id, versions in keys for version in versions]
    threads = max(1, min(opts.verify_threads, len(tasks)))
    lock = threading.Lock()
    counts: Counter = Counter()
    lost_seqs: list[int] = []
    mismatched_seqs: list[int] = []
    samples: list[dict] = []

    def note(what: str, **details) -> None:
        with lock:
            counts[what] += 1
            if len(samples) < SAMPLES:
                samples.append({"problem": what, **details})

    def attempt(sdk, action: str, **params) -> tuple[dict | None, tuple | None]:
        """Up to three tries when there is no response at all; (body, None) or (None, (kind, status, ...))."""
        for tries in range(3):
            begun = time.perf_counter()
            try:
                body = sdk.call(action, **params)
            except Exception as exc:
                failure = classify(exc)
                stats.failure(action, *failure, detail=f"verify {label} {sdk.name}")
                if failure[0] == "transport" and tries < 2:
                    time.sleep(0.2 * (tries + 1))
                    continue
                return None, failure
            stats.success(action, time.perf_counter() - begun)
            return body, None
        raise AssertionError("unreachable")

    def work(stripe: int) -> None:
        rng = random.Random(f"{seed}:verify:{label}:{stripe}")
        try:
            sdk = make_client(SDK_KINDS[stripe % len(SDK_KINDS)], live)
            for task in tasks[stripe::threads]:
                if time.monotonic() > deadline:
                    note("unverified (out of time)")
                    continue
                if task[0] == "blob":
                    check_blob(sdk, rng, task[1])
                elif task[0] == "key":
                    body, failure = attempt(sdk, "DescribeKey", KeyId=task[1])
                    if failure:
                        note("key lost" if failure[0] == "api" else "unverified", key=task[1], error=failure[2])
                    else:
                        counts["keys checked"] += 1
                else:
                    body, failure = attempt(sdk, "DescribeKeyVersion", KeyId=task[1], KeyVersionId=task[2])
                    if failure:
                        note("version lost" if failure[0] == "api" else "unverified", key=task[1],
                             version=task[2], error=failure[2])
                    else:
                        counts["versions checked"] += 1
        except Exception:
            note("verifier exception", traceback=traceback.format_exc())

    def check_blob(sdk, rng: random.Random, record: BlobRecord) -> None:
        body, failure = attempt(sdk, "Decrypt", CiphertextBlob=record.blob, **context_params(rng, record.context))
        if failure:
            kind, status, code, message = failure
            if kind == "api":
                with lock:
                    lost_seqs.append(record.seq)
                note("blob lost", seq=record.seq, op=record.op, key=record.key_id, version=record.key_version_id,
                     status=status, code=code, message=message[:300])
            else:
                note("unverified", seq=record.seq, kind=kind, code=code, message=message[:300])
            return
        answer = (body.get("Plaintext"), body.get("KeyId"), body.get("KeyVersionId"))
        if answer != (record.plaintext, record.key_id, record.key_version_id):
            with lock:
                mismatched_seqs.append(record.seq)
            note("blob mismatched", seq=record.seq, op=record.op, expected_key=record.key_id, key=answer[1],
                 expected_version=record.key_version_id, version=answer[2],
                 plaintext_matches=answer[0] == record.plaintext)
            return
        with lock:
            counts["blobs verified"] += 1

    pool = [threading.Thread(target=work, args=(i,), name=f"verify-{i}", daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(max(1.0, deadline - time.monotonic() + JOIN_TIMEOUT_S))
    if any(thread.is_alive() for thread in pool):
        note("verifier hung")
    return {
        "label": label,
        "blobs": len(records),
        "blobs_verified": counts["blobs verified"],
        "lost": counts["blob lost"],
        "mismatched": counts["blob mismatched"],
        "unverified": counts["unverified"] + counts["unverified (out of time)"],
        "keys": len(keys),
        "keys_checked": counts["keys checked"],
        "keys_lost": counts["key lost"],
        "versions": sum(len(v) for _, v in keys),
        "versions_checked": counts["versions checked"],
        "versions_lost": counts["version lost"],
        "verifier_problems": counts["verifier exception"] + counts["verifier hung"],
        "seconds": round(time.monotonic() - started, 2),
        "lost_seqs": sorted(lost_seqs)[:1000],
        "mismatched_seqs": sorted(mismatched_seqs)[:1000],
        "samples": samples,
    }


# --- the server: crash, doctor, restart ----------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def kill_group(live: LiveServer, just_before: Callable[[], None] | None = None) -> dict:
    """SIGKILL the server's whole process group (master and workers) and wait until none is left.

    ``just_before`` runs right before the signal (the crash records what was in flight then)."""
    assert live.process is not None
    pgid = live.process.pid  # started with start_new_session: the master leads its own group
    members = group_members(pgid)
    if just_before is not None:
        just_before()
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    returncode = live.process.wait(GROUP_GONE_TIMEOUT_S)
    deadline = time.monotonic() + GROUP_GONE_TIMEOUT_S
    survivors = group_members(pgid)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.05)
        survivors = group_members(pgid)
    return {"processes_killed": len(members), "returncode": returncode, "survivors": survivors}


def run_doctor(live: LiveServer, *extra: str) -> dict:
    started = time.monotonic()
    try:
        result = live.cli("doctor", *extra, check=False)
    except subprocess.TimeoutExpired as exc:
        return {"command": " ".join(["doctor", *extra]), "returncode": None, "lines": [f"timed out: {exc}"],
                "seconds": round(time.monotonic() - started, 2)}
    lines = result.stdout.splitlines()
    return {"command": " ".join(["doctor", *extra]), "returncode": result.returncode,
            "lines": lines[:50] + ([f"... {len(lines) - 50} more"] if len(lines) > 50 else []),
            "stderr": result.stderr[-2000:], "seconds": round(time.monotonic() - started, 2)}


def database(live: LiveServer) -> Path:
    path = live.data_dir / "hsmkms.db"  # write_config leaves [store] path unset: <data_dir>/hsmkms.db
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def pending_objects(live: LiveServer) -> list[tuple]:
    with sqlite3.connect(database(live)) as conn:
        return conn.execute("SELECT object_id, key_id, purpose, created_at FROM pending_objects").fetchall()


def age_journal(live: LiveServer, seconds: int = 3600) -> int:
    """Make every journalled HSM operation look an hour old (what tests/e2e/test_operations.py does).

    A journal entry means an HSM object creation or destruction began and its result was not committed.
    ``doctor --repair`` rolls back a creation only once it is STALE_CREATE_SECONDS (600 s) old, because in a
    running deployment a younger one may still be in progress in some worker.  Here that cannot be: the
    whole process group of the server was SIGKILLed and has been waited for, and no other process uses this
    deployment, so every entry belongs to an operation that is over for good.  Ageing the entries is what
    the passage of ten minutes would do, and lets repair run now instead of after a 10-minute wait.
    """
    with sqlite3.connect(database(live)) as conn:
        return conn.execute("UPDATE pending_objects SET created_at = created_at - ?", (seconds,)).rowcount


def doctor_after_crash(live: LiveServer) -> dict:
    """doctor (what the crash left), age the journal, doctor --repair, doctor (must exit 0)."""
    before = run_doctor(live)
    pending = pending_objects(live)
    aged = age_journal(live)
    repair = run_doctor(live, "--repair")
    after = run_doctor(live)
    return {"before": before, "pending_objects": [list(row) for row in pending], "aged": aged,
            "repair": repair, "after": after, "consistent": after["returncode"] == 0}


# --- one soak run --------------------------------------------------------------------------------------


def crash_moments(rng: random.Random, count: int, seconds: float) -> list[float]:
    """``count`` moments spread over [10 %, 90 %] of the load: one drawn uniformly in each equal slice."""
    if count <= 0:
        return []
    start, span = 0.1 * seconds, 0.8 * seconds / count
    return [round(start + i * span + rng.uniform(0.1, 0.9) * span, 3) for i in range(count)]


class Soak:
    def __init__(self, opts: Options):
        self.opts = opts
        self.seed = opts.seed if opts.seed is not None else int.from_bytes(os.urandom(4), "big")
        self.rng = random.Random(self.seed)
        self.verify_stats = Stats()
        self.verifications: list[dict] = []
        self.doctor: list[dict] = []
        self.crashes: list[dict] = []
        self.sigterm: list[dict] = []
        self.fatal: str | None = None
        self.live: LiveServer | None = None
        self.workload: Workload | None = None
        self.work_dir: Path | None = None
        self.timeline: list[str] = []
        self.journal = opts.journal or opts.json_out.with_name("blobs.jsonl")

    def say(self, message: str) -> None:
        self.timeline.append(f"{time.strftime('%H:%M:%S')} {message}")
        if not self.opts.quiet:
            print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def run(self) -> dict:
        opts = self.opts
        started = time.monotonic()
        self.work_dir = Path(tempfile.mkdtemp(prefix="hsmkms-soak-", dir=opts.work_dir))
        ledger = Ledger(self.journal)
        pool = KeyPool()
        active = 0.0
        try:
            self.live = provision_server(self.work_dir / "deployment", workers=opts.workers)
            self.live.start()
            self.say(f"server on {self.live.url} (pid {self.live.process.pid}), seed {self.seed}")
            self.seed_pool(pool)
            self.workload = Workload(self.live, opts, self.seed, ledger, pool)
            active = self.drive(self.workload)
            self.finish(ledger, pool)
        except Exception:  # reported as a failure of the run
            self.fatal = traceback.format_exc()
            self.say(f"fatal: {self.fatal.strip().splitlines()[-1]}")
        finally:
            if self.workload is not None:
                self.workload.stop.set()
                self.workload.gate.open()
            if self.live is not None and self.live.process is not None and self.live.process.poll() is None:
                kill_group(self.live)
            ledger.close()
        results = self.results(ledger, pool, active, time.monotonic() - started)
        self.write(results)
        if not results["failures"] and not opts.keep:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return results

    def seed_pool(self, pool: KeyPool) -> None:
        """alias/dev's key and INITIAL_KEYS more (one with an alias), made through the Tea SDK."""
        sdk = make_client("tea-v3", self.live)
        meta = sdk.call("DescribeKey", KeyId=self.live.alias)["KeyMetadata"]
        pool.add(PoolKey(meta["KeyId"], meta["Arn"], self.live.alias, [meta["PrimaryKeyVersion"]]))
        for number in range(INITIAL_KEYS):
            meta = sdk.call("CreateKey", Description=f"soak initial key {number}")["KeyMetadata"]
            key = PoolKey(meta["KeyId"], meta["Arn"], versions=[meta["PrimaryKeyVersion"]])
            if number == 0:
                key.alias = "alias/soak-initial"
                sdk.call("CreateAlias", AliasName=key.alias, KeyId=key.key_id)
            pool.add(key)

    def drive(self, workload: Workload) -> float:
        """Run the clients for opts.seconds of load (time spent handling crashes is not load), crashing the
        server at the planned moments; returns the seconds of load."""
        opts = self.opts
        plan = crash_moments(self.rng, opts.crashes, opts.seconds)
        if plan:
            self.say(f"crashes planned at {', '.join(f'{t:.1f}' for t in plan)} s of load")
        threads = [threading.Thread(target=workload.client, args=(i,), name=f"client-{i}", daemon=True)
                   for i in range(opts.clients)]
        t0 = time.monotonic()
        paused = 0.0
        for thread in threads:
            thread.start()
        self.say(f"{opts.clients} clients running for {opts.seconds:g} s (at most {opts.max_requests} requests)")
        next_report = 10.0
        while True:
            active = time.monotonic() - t0 - paused
            if active >= opts.seconds or workload.gate.members == 0:
                break
            if plan and active >= plan[0]:
                plan.pop(0)
                begun = time.monotonic()
                self.crash(workload, active)
                paused += time.monotonic() - begun
                continue
            if active >= next_report:
                self.say(f"{active:.0f} s: {workload.stats.requests} requests, {len(workload.ledger.records)} blobs")
                next_report += 10.0
            time.sleep(0.02)
        active = time.monotonic() - t0 - paused
        workload.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        hung = [thread.name for thread in threads if thread.is_alive()]
        if hung:
            raise RuntimeError(f"client threads did not finish within {JOIN_TIMEOUT_S} s: {hung}")
        if plan:
            self.say(f"the load ended before {len(plan)} planned crash(es)")
        self.say(f"load over after {active:.1f} s: {workload.stats.requests} requests, "
                 f"{len(workload.ledger.records)} blobs")
        return active

    def crash(self, workload: Workload, at: float) -> None:
        number = len(self.crashes) + 1
        in_flight: Counter = Counter()

        def going_down() -> None:
            in_flight.update(action for action in workload.in_flight if action)
            workload.server_up = False  # from here on, a request without a response is expected
            workload.generation += 1

        killed = kill_group(self.live, going_down)
        parked = workload.gate.close(PARK_TIMEOUT_S)
        self.say(f"crash {number} at {at:.1f} s: SIGKILL to {killed['processes_killed']} processes, "
                 f"{sum(in_flight.values())} requests in flight {dict(in_flight)}")
        entry = {"number": number, "at_load_s": round(at, 2), "in_flight": dict(in_flight), **killed,
                 "clients_parked": parked, "blobs_before": len(workload.ledger.records)}
        self.crashes.append(entry)
        if killed["survivors"]:
            raise RuntimeError(f"processes of the server survived SIGKILL: {killed['survivors']}")
        if not parked:
            raise RuntimeError(f"client threads did not park within {PARK_TIMEOUT_S} s after the kill")
        doctor = doctor_after_crash(self.live)
        doctor["phase"] = f"after crash {number}"
        self.doctor.append(doctor)
        entry["doctor_consistent"] = doctor["consistent"]
        entry["interrupted_operations"] = len(doctor["pending_objects"])
        creations = sum(in_flight[a] for a in CREATIONS)
        if len(doctor["pending_objects"]) > creations:  # a journal entry can only come from one in flight
            entry["note"] = f"{len(doctor['pending_objects'])} journal entries but {creations} creations in flight"
        self.say(f"crash {number}: doctor before repair exit {doctor['before']['returncode']} "
                 f"({len(doctor['pending_objects'])} interrupted), after repair exit {doctor['after']['returncode']}")
        begun = time.monotonic()
        self.live.start()
        entry["restart_s"] = round(time.monotonic() - begun, 2)
        close_idle_connections()
        check = verify(self.live, workload.ledger.snapshot(), workload.pool.snapshot(), self.opts,
                       self.verify_stats, self.seed, f"after crash {number}")
        self.verifications.append(check)
        entry["verification"] = {k: v for k, v in check.items() if k not in ("samples", "lost_seqs",
                                                                             "mismatched_seqs")}
        self.say(f"crash {number}: restarted in {entry['restart_s']} s; {check['blobs_verified']}/{check['blobs']} "
                 f"blobs verified, {check['lost']} lost, {check['mismatched']} mismatched, "
                 f"{check['keys_lost']} keys and {check['versions_lost']} versions lost ({check['seconds']} s)")
        # The verifiers' idle keep-alive connections: gunicorn closes a connection idle for 2 s, and a client
        # that reuses one at that moment gets "connection reset" -- an artefact of the pause, not of the server.
        close_idle_connections()
        workload.server_up = True
        workload.gate.open()

    def stop_cleanly(self, phase: str) -> None:
        close_idle_connections()
        begun = time.monotonic()
        try:
            code = self.live.stop(signal.SIGTERM)
        except AssertionError as exc:  # LiveServer.stop: did not stop within 20 s, was killed
            code = None
            self.say(f"{phase}: the server did not stop on SIGTERM: {str(exc).splitlines()[0]}")
        self.sigterm.append({"phase": phase, "returncode": code, "seconds": round(time.monotonic() - begun, 2)})
        self.say(f"{phase}: SIGTERM, exit {code}")

    def finish(self, ledger: Ledger, pool: KeyPool) -> None:
        """SIGTERM (exit 0), doctor (consistent), restart, verify everything, SIGTERM again."""
        self.stop_cleanly("after the load")
        doctor = {"phase": "after SIGTERM", "after": run_doctor(self.live)}
        doctor["consistent"] = doctor["after"]["returncode"] == 0
        self.doctor.append(doctor)
        self.say(f"doctor after SIGTERM: exit {doctor['after']['returncode']}")
        self.live.start()
        close_idle_connections()
        check = verify(self.live, ledger.snapshot(), pool.snapshot(), self.opts, self.verify_stats, self.seed,
                       "final")
        self.verifications.append(check)
        self.say(f"final: {check['blobs_verified']}/{check['blobs']} blobs verified, {check['lost']} lost, "
                 f"{check['mismatched']} mismatched, {check['unverified']} unverified, {check['keys_lost']} keys "
                 f"and {check['versions_lost']} versions lost ({check['seconds']} s)")
        self.stop_cleanly("after verification")

    # -- the report --

    def server_log_problems(self) -> list[str]:
        if self.live is None or not self.live.log_path.exists():
            return []
        pattern = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
        return [line for line in self.live.log().splitlines() if pattern.search(line)]

    def results(self, ledger: Ledger, pool: KeyPool, active: float, duration: float) -> dict:
        opts = self.opts
        load = self.workload.stats.report() if self.workload else Stats().report()
        verification = self.verify_stats.report()
        final = next((v for v in self.verifications if v["label"] == "final"), None)
        lost = sorted({seq for v in self.verifications for seq in v["lost_seqs"]})
        mismatched = sorted({seq for v in self.verifications for seq in v["mismatched_seqs"]})
        workload = self.workload
        log_problems = self.server_log_problems()
        results = {
            "mode": "crash" if opts.crashes else "normal",
            "options": {"clients": opts.clients, "seconds": opts.seconds, "max_requests": opts.max_requests,
                        "crashes": opts.crashes, "seed": self.seed, "workers": opts.workers},
            "requests": load["requests"],
            "requests_per_s": round(load["requests"] / active, 1) if active else 0.0,
            "load_seconds": round(active, 2),
            "duration_s": round(duration, 2),
            "by_action": load["by_action"],
            "ok_by_action": load["ok_by_action"],
            "errors_by_code": load["errors_by_code"],
            "errors_by_status": load["errors_by_status"],
            "status_5xx": load["status_5xx"] + verification["status_5xx"],
            "status_5xx_load": load["status_5xx"],
            "status_5xx_verification": verification["status_5xx"],
            "transport_errors": load["transport_errors_expected"] + load["transport_errors_unexpected"],
            "transport_errors_during_crashes": load["transport_errors_expected"],
            "transport_errors_unexpected": load["transport_errors_unexpected"]
            + verification["transport_errors_unexpected"],
            "transport_errors_by_code": load["transport_errors_by_code"],
            "latency_ms": load["latency_ms"],
            "latency_ms_by_action": load["latency_ms_by_action"],
            "error_samples": load["error_samples"],
            "blobs_recorded": len(ledger.records),
            "blobs_verified": final["blobs_verified"] if final else 0,
            "lost": len(lost),
            "mismatched": len(mismatched),
            "unverified": sum(v["unverified"] for v in self.verifications),
            "keys_lost": max((v["keys_lost"] for v in self.verifications), default=0),
            "versions_lost": max((v["versions_lost"] for v in self.verifications), default=0),
            "keys": len(pool.keys),
            "keys_created": workload.keys_created if workload else 0,
            "aliases_created": workload.aliases_created if workload else 0,
            "versions_created": workload.versions_created if workload else 0,
            "inline_checks": dict(workload.inline) if workload else {},
            "inline_problems": workload.inline_problems if workload else [],
            "client_exceptions": workload.client_exceptions if workload else [],
            "verification_requests": verification["requests"],
            "verification_errors_by_code": verification["errors_by_code"],
            "verification_error_samples": verification["error_samples"],
            "verifications": [{k: v for k, v in check.items() if k not in ("lost_seqs", "mismatched_seqs")}
                              for check in self.verifications],
            "lost_seqs": lost[:1000],
            "mismatched_seqs": mismatched[:1000],
            "crashes_planned": opts.crashes,
            "crashes": len(self.crashes),
            "crash_details": self.crashes,
            "doctor": self.doctor,
            "doctor_consistent": bool(self.doctor) and all(d["consistent"] for d in self.doctor),
            "sigterm": self.sigterm,
            "server_log_errors": len(log_problems),
            "server_log_error_lines": log_problems[:50],
            "journal": str(self.journal),
            "deployment": str(self.work_dir),
            "timeline": self.timeline,
            "fatal": self.fatal,
        }
        results["failures"] = failures(results)
        results["passed"] = not results["failures"]
        return results

    def write(self, results: dict) -> None:
        out = self.opts.json_out
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.live is not None and self.live.log_path.exists():
            log_copy = out.with_name(out.stem + ".server.log")
            shutil.copyfile(self.live.log_path, log_copy)
            results["server_log"] = str(log_copy)
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def failures(results: dict) -> list[str]:
    """Why a run failed; empty when it passed."""
    found = []
    if results["fatal"]:
        found.append("the soak could not complete: " + results["fatal"].strip().splitlines()[-1])
    checks = [
        ("status_5xx", "5xx responses"),
        ("lost", "lost blobs (Decrypt failed)"),
        ("mismatched", "mismatched blobs (wrong plaintext, key or version)"),
        ("unverified", "blobs, keys or versions that could not be checked"),
        ("keys_lost", "acknowledged keys missing after a restart"),
        ("versions_lost", "acknowledged key versions missing after a restart"),
        ("transport_errors_unexpected", "transport errors while the server was up"),
        ("server_log_errors", "ERROR/CRITICAL/Traceback lines in the server log"),
    ]
    found += [f"{results[name]} {what}" for name, what in checks if results[name]]
    unexpected = sum(results["errors_by_code"].values()) - results["status_5xx_load"]
    if unexpected:
        found.append(f"{unexpected} non-5xx error responses to valid requests (errors by code: "
                     f"{results['errors_by_code']})")
    problems = sum(n for what, n in results["inline_checks"].items() if what != "decrypts checked")
    if problems:
        found.append(f"{problems} wrong answers seen during the load")
    if results["client_exceptions"]:
        found.append(f"{len(results['client_exceptions'])} client threads failed (a bug in the soak)")
    bad_doctor = [d["phase"] for d in results["doctor"] if not d["consistent"]]
    if bad_doctor:
        found.append(f"doctor inconsistent: {', '.join(bad_doctor)}")
    bad_stops = [f"{s['phase']}: {s['returncode']}" for s in results["sigterm"] if s["returncode"] != 0]
    if bad_stops:
        found.append(f"non-zero exit on SIGTERM ({', '.join(bad_stops)})")
    if results["crashes"] < results["crashes_planned"]:
        found.append(f"only {results['crashes']} of {results['crashes_planned']} crashes happened")
    if not results["fatal"] and results["blobs_verified"] != results["blobs_recorded"]:
        found.append(f"{results['blobs_verified']} of {results['blobs_recorded']} blobs verified")
    return found


def summary(results: dict) -> str:
    lines = [
        f"hsmkms soak ({results['mode']}): {results['options']['clients']} clients, "
        f"{results['load_seconds']} s of load, seed {results['options']['seed']}, {results['duration_s']} s in all",
        f"  requests            {results['requests']} ({results['requests_per_s']}/s)   "
        f"latency ms {results['latency_ms']}",
        f"  ok by action        {results['ok_by_action']}",
        f"  errors by code      {results['errors_by_code'] or 'none'}",
        f"  5xx                 {results['status_5xx']}",
        f"  transport errors    {results['transport_errors']} ({results['transport_errors_during_crashes']} during "
        f"crashes, {results['transport_errors_unexpected']} while up) {results['transport_errors_by_code'] or ''}",
        f"  blobs recorded      {results['blobs_recorded']}",
        f"  blobs verified      {results['blobs_verified']}  (lost {results['lost']}, mismatched "
        f"{results['mismatched']}, unverified {results['unverified']})",
        f"  keys / versions     {results['keys']} keys ({results['keys_created']} created, "
        f"{results['aliases_created']} aliases), {results['versions_created']} versions created; lost: "
        f"{results['keys_lost']} keys, {results['versions_lost']} versions",
        f"  inline checks       {results['inline_checks']}",
        f"  crashes             {results['crashes']} of {results['crashes_planned']}",
    ]
    for crash in results["crash_details"]:
        verification = crash.get("verification", {})
        lines.append(f"    #{crash['number']} at {crash['at_load_s']} s: in flight {crash['in_flight']}, "
                     f"interrupted ops {crash.get('interrupted_operations')}, doctor consistent after repair: "
                     f"{crash.get('doctor_consistent')}, restart {crash.get('restart_s')} s, verified "
                     f"{verification.get('blobs_verified')}/{verification.get('blobs')} blobs"
                     + (f" [{crash['note']}]" if crash.get("note") else ""))
    lines.append("  doctor              " + ", ".join(
        f"{d['phase']}: {'consistent' if d['consistent'] else 'INCONSISTENT'}" for d in results["doctor"]))
    lines.append(f"  SIGTERM exits       {[s['returncode'] for s in results['sigterm']]}")
    lines.append(f"  server log errors   {results['server_log_errors']}")
    failed = "\n".join(f"    - {failure}" for failure in results["failures"])
    lines.append("  PASSED" if results["passed"] else "  FAILED:\n" + failed)
    return "\n".join(lines)


def run_soak(opts: Options) -> dict:
    """One soak run; the results dict (also written to opts.json_out)."""
    return Soak(opts).run()


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64, help="concurrent client threads (default 64)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="at most this many requests in all")
    parser.add_argument("--crashes", type=int, default=0, help="SIGKILL the server this many times (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, reported)")
    parser.add_argument("--json-out", type=Path, default=OUT / "results.json", help="where the results go")
    parser.add_argument("--journal", type=Path, default=None, help="JSONL of every acknowledged blob "
                        "(default: blobs.jsonl next to --json-out)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument("--verify-threads", type=int, default=16, help="parallel verifiers (default 16)")
    parser.add_argument("--verify-timeout", type=float, default=600.0, help="seconds per verification pass")
    parser.add_argument("--keep", action="store_true", help="keep the temporary deployment")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    for name in ("clients", "max_requests", "workers", "verify_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.crashes < 0 or args.verify_timeout <= 0:
        parser.error("--seconds and --verify-timeout must be positive, --crashes not negative")
    if args.seconds > 3600 or args.clients > 1024 or args.crashes > 100:
        parser.error("bounded: at most 3600 seconds, 1024 clients, 100 crashes")
    return Options(clients=args.clients, seconds=args.seconds, max_requests=args.max_requests,
                   crashes=args.crashes, seed=args.seed, json_out=args.json_out.resolve(),
                   journal=args.journal.resolve() if args.journal else None, workers=args.workers,
                   verify_threads=args.verify_threads, verify_timeout=args.verify_timeout, keep=args.keep,
                   quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    soak = Soak(opts)
    try:
        results = soak.run()
    except KeyboardInterrupt:
        if soak.live is not None and soak.live.process is not None and soak.live.process.poll() is None:
            kill_group(soak.live)
        print("interrupted", file=sys.stderr)
        return 130
    print(summary(results))
    print(f"results: {opts.json_out}")
    if results["fatal"]:
        print(results["fatal"], file=sys.stderr)
        return 2
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
