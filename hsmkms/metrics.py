"""Prometheus metrics: requests by action and code, request latency, HSM operation latency and errors.

With several worker processes each one counts on its own, so ``hsmkms serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` before it forks and ``/metrics`` (answered by any worker) adds up the files every
worker writes there.  prometheus_client picks its mode when first imported, which is why it is imported
here only when a ``Metrics`` is made -- in a worker, after the fork.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from hsmkms.hsm.backend import DecryptionFailed, HsmBackend, KeyObjectInfo

T = TypeVar("T")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HSM_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5)


class Metrics:
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
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        """labels() takes a lock and builds a key each time; the hot path reuses the children."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, action: str, code: str, seconds: float) -> None:
        action = action if action in self._actions else "unknown"  # clients choose the Action: bound it
        self._child(self._requests, action, code).inc()
        self._child(self._latency, action).observe(seconds)

    def hsm_operation(self, operation: str, seconds: float, error: str | None) -> None:
        self._child(self._hsm_latency, operation).observe(seconds)
        if error is not None:
            self._child(self._hsm_errors, operation, error).inc()

    def exposition(self) -> tuple[bytes, str]:
        return exposition(self.registry)


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

    def _timed(self, operation: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        error = None
        try:
            return call()
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

    def ping(self) -> bool:
        return self._backend.ping()

    def random(self, length: int) -> bytes:
        return self._timed("random", lambda: self._backend.random(length))

    def create_aes_key(self, object_id: str, label: str) -> None:
        self._timed("create_key", lambda: self._backend.create_aes_key(object_id, label))

    def destroy_key(self, object_id: str) -> None:
        self._timed("destroy_key", lambda: self._backend.destroy_key(object_id))

    def has_key(self, object_id: str) -> bool:
        return self._backend.has_key(object_id)

    def list_key_ids(self) -> dict[str, str]:
        return self._backend.list_key_ids()

    def key_info(self, object_id: str) -> KeyObjectInfo:
        return self._backend.key_info(object_id)

    def gcm_encrypt(self, object_id: str, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._timed("encrypt", lambda: self._backend.gcm_encrypt(object_id, iv, plaintext, aad))

    def gcm_decrypt(self, object_id: str, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
        return self._timed("decrypt", lambda: self._backend.gcm_decrypt(object_id, iv, sealed, aad))
