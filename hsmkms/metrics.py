"""Prometheus metrics: requests by action and code, request latency, HSM operation latency and errors.

With several worker processes each one counts on its own, so ``hsmkms serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` before it forks and ``/metrics`` (answered by any worker) adds up the files every
worker writes there.  A worker publishes its figures every FLUSH_INTERVAL_S (see ``Metrics``), so a scrape
sees them at most that late.  prometheus_client picks its mode when first imported, which is why it is imported
here only when a ``Metrics`` is made -- in a worker, after the fork.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from hsmkms.hsm.backend import DecryptionFailed, HsmBackend, KeyObjectInfo

T = TypeVar("T")
log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL_S = 0.5
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HSM_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5)


class Metrics:
    """The service's figures.  The request path only adds to plain in-process tallies (a dict update under a
    lock nobody else holds for long); ``flush()`` -- every FLUSH_INTERVAL_S on a background thread, before an
    exposition and at exit -- moves them into the prometheus_client metrics.  In multiprocess mode each
    prometheus_client update takes a lock, a getpid() and an mmap write, about 4 µs; five of them a request
    were a tenth of its CPU."""

    def __init__(self, actions: set[str]):
        from prometheus_client import CollectorRegistry, Counter, Histogram  # see the module docstring

        self._actions = actions
        registry = CollectorRegistry(auto_describe=True)
        self.registry = registry
        self._requests = Counter("hsmkms_requests_total", "API requests by action and outcome code",
                                 ["action", "code"], registry=registry)
        self._latency = Histogram("hsmkms_request_duration_seconds", "API request latency by action",
                                  ["action"], buckets=LATENCY_BUCKETS, registry=registry)
        self._hsm_latency = Histogram("hsmkms_hsm_operation_duration_seconds", "PKCS#11 operation latency",
                                      ["operation"], buckets=HSM_BUCKETS, registry=registry)
        self._hsm_errors = Counter("hsmkms_hsm_errors_total", "PKCS#11 operations that failed",
                                   ["operation", "error"], registry=registry)
        self._lock = threading.Lock()
        self._tallies = _Tallies()
        self._flusher: threading.Thread | None = None

    def request(self, action: str, code: str, seconds: float) -> None:
        action = action if action in self._actions else "unknown"  # clients choose the Action: bound it
        with self._lock:
            self._tallies.count(self._requests, (action, code))
            self._tallies.observe(self._latency, (action,), LATENCY_BUCKETS, seconds)

    def hsm_operation(self, operation: str, seconds: float, error: str | None) -> None:
        with self._lock:
            self._tallies.observe(self._hsm_latency, (operation,), HSM_BUCKETS, seconds)
            if error is not None:
                self._tallies.count(self._hsm_errors, (operation, error))

    def flush(self) -> None:
        """Publish what was tallied since the last flush."""
        with self._lock:
            tallies, self._tallies = self._tallies, _Tallies()
        tallies.publish()

    def start_flushing(self) -> None:
        """Flush every FLUSH_INTERVAL_S from a daemon thread (in a serving worker, after the fork)."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="hsmkms-metrics", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            try:
                self.flush()
            except Exception:  # a full disk under the metrics directory must not end the flushing for good
                log.exception("cannot publish metrics")

    def exposition(self) -> tuple[bytes, str]:
        self.flush()
        return exposition(self.registry)


class _Tallies:
    """Counts and histogram observations not yet published, keyed by (metric, label values)."""

    def __init__(self) -> None:
        self.counts: dict[tuple, int] = {}
        self.histograms: dict[tuple, list] = {}  # -> [count per bucket ..., +Inf bucket, sum]

    def count(self, metric, labels: tuple[str, ...]) -> None:
        key = (metric, labels)
        self.counts[key] = self.counts.get(key, 0) + 1

    def observe(self, metric, labels: tuple[str, ...], buckets: tuple[float, ...], value: float) -> None:
        key = (metric, labels)
        tally = self.histograms.get(key)
        if tally is None:
            tally = self.histograms[key] = [0] * (len(buckets) + 1) + [0.0]
        tally[bisect.bisect_left(buckets, value)] += 1  # the first bucket whose bound is >= value
        tally[-1] += value

    def publish(self) -> None:
        # Histograms first: a scrape (another worker's, at any moment) that counts a request then also holds its
        # latency, which rate(duration_count) / rate(requests_total) and the tests rely on.
        for (metric, labels), tally in self.histograms.items():
            _add_observations(metric.labels(*labels), tally[:-1], tally[-1])
        for (metric, labels), count in self.counts.items():
            metric.labels(*labels).inc(count)


def _add_observations(child, per_bucket: list[int], total: float) -> None:
    """Add many observations to a histogram child at once: what ``observe()`` does per value, done per bucket.

    prometheus_client has no public call for it; this uses the child's bucket and sum values (stable for
    years; tests/unit/test_metrics.py compares the result with plain observe() calls, so an upgrade that
    changes them fails there)."""
    child._sum.inc(total)
    for bucket, count in zip(child._buckets, per_bucket, strict=True):
        if count:
            bucket.inc(count)


def exposition(registry=None) -> tuple[bytes, str]:
    """The Prometheus text: every worker's figures in multiprocess mode, else ``registry``'s."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MeteredHsm:
    """An HsmBackend that times every operation and counts its failures (a failed tag check is not one)."""

    def __init__(self, backend: HsmBackend, metrics: Metrics):
        self._backend = backend
        self._metrics = metrics

    def _timed(self, operation: str, call: Callable[..., T], *args) -> T:
        started = time.perf_counter()
        error = None
        try:
            return call(*args)
        except DecryptionFailed:
            raise
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            self._metrics.hsm_operation(operation, time.perf_counter() - started, error)

    def open(self) -> None:
        self._backend.open()

    def close(self) -> None:
        self._backend.close()

    def ping(self, canary_id: str) -> bool:
        return self._backend.ping(canary_id)

    def random(self, length: int) -> bytes:
        # A draw from the backend's pool is not an HSM operation: only the refills that reach the token count.
        drawn = self._backend.pooled_random(length)
        return drawn if drawn is not None else self._timed("random", self._backend.random, length)

    def pooled_random(self, length: int) -> bytes | None:
        return self._backend.pooled_random(length)

    def create_aes_key(self, object_id: str, label: str) -> None:
        self._timed("create_key", self._backend.create_aes_key, object_id, label)

    def destroy_key(self, object_id: str) -> None:
        self._timed("destroy_key", self._backend.destroy_key, object_id)

    def has_key(self, object_id: str) -> bool:
        return self._backend.has_key(object_id)

    def list_key_ids(self) -> dict[str, str]:
        return self._backend.list_key_ids()

    def foreign_objects(self) -> list[str]:
        return self._backend.foreign_objects()

    def key_info(self, object_id: str) -> KeyObjectInfo:
        return self._backend.key_info(object_id)

    def allowed_mechanisms(self, object_id: str) -> tuple[str, ...] | None:
        return self._backend.allowed_mechanisms(object_id)

    def gcm_encrypt(self, object_id: str, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._timed("encrypt", self._backend.gcm_encrypt, object_id, iv, plaintext, aad)

    def gcm_encrypt_token_iv(self, object_id: str, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        return self._timed("encrypt", self._backend.gcm_encrypt_token_iv, object_id, plaintext, aad)

    def gcm_decrypt(self, object_id: str, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
        return self._timed("decrypt", self._backend.gcm_decrypt, object_id, iv, sealed, aad)

    @property
    def token_makes_iv(self) -> bool:
        return getattr(self._backend, "token_makes_iv", False)

    def create_wrapping_key_pair(self, object_id: str, label: str) -> bytes:
        return self._timed("create_wrapping_key", self._backend.create_wrapping_key_pair, object_id, label)

    def unwrap_algorithms(self) -> tuple[str, ...]:
        return self._backend.unwrap_algorithms()

    def unwrap_aes_key(self, wrapping_id: str, algorithm: str, wrapped: bytes, object_id: str, label: str) -> None:
        self._timed("unwrap_key", self._backend.unwrap_aes_key, wrapping_id, algorithm, wrapped, object_id, label)

    def destroy_wrapping_key(self, object_id: str) -> None:
        self._timed("destroy_key", self._backend.destroy_wrapping_key, object_id)

    def list_wrapping_key_ids(self) -> dict[str, str]:
        return self._backend.list_wrapping_key_ids()

    def wrapping_key_info(self, object_id: str) -> KeyObjectInfo:
        return self._backend.wrapping_key_info(object_id)

    def create_key_pair(self, object_id: str, label: str, key_spec: str, usage: str) -> None:
        self._timed("create_key", self._backend.create_key_pair, object_id, label, key_spec, usage)

    def create_hmac_key(self, object_id: str, label: str, algorithm: str) -> None:
        self._timed("create_key", self._backend.create_hmac_key, object_id, label, algorithm)

    def public_key(self, object_id: str) -> bytes:
        return self._timed("public_key", self._backend.public_key, object_id)

    def sign_digest(self, object_id: str, algorithm: str, digest: bytes) -> bytes:
        return self._timed("sign", self._backend.sign_digest, object_id, algorithm, digest)

    def rsa_oaep_decrypt(self, object_id: str, hash_name: str, ciphertext: bytes) -> bytes:
        return self._timed("decrypt", self._backend.rsa_oaep_decrypt, object_id, hash_name, ciphertext)

    def hmac(self, object_id: str, algorithm: str, message: bytes) -> bytes:
        return self._timed("mac", self._backend.hmac, object_id, algorithm, message)
