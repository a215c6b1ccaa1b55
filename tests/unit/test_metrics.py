"""Metrics: tallies on the request path, published by flush() exactly as plain prometheus_client calls would."""

from __future__ import annotations

import random
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from hsmkms import metrics as metrics_module
from hsmkms.metrics import HSM_BUCKETS, LATENCY_BUCKETS, Metrics


def samples(registry) -> dict[str, float]:
    """Every sample line of the text exposition (creation timestamps left out), by name and labels."""
    found = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        name, value = line.rsplit(" ", 1)
        found[name] = float(value)
    return found


def reference(requests, hsm_calls) -> CollectorRegistry:
    """The same figures made by one prometheus_client call per event."""
    registry = CollectorRegistry()
    counter = Counter("hsmkms_requests_total", "", ["action", "code"], registry=registry)
    latency = Histogram("hsmkms_request_duration_seconds", "", ["action"], buckets=LATENCY_BUCKETS,
                        registry=registry)
    hsm = Histogram("hsmkms_hsm_operation_duration_seconds", "", ["operation"], buckets=HSM_BUCKETS,
                    registry=registry)
    errors = Counter("hsmkms_hsm_errors_total", "", ["operation", "error"], registry=registry)
    for action, code, seconds in requests:
        counter.labels(action, code).inc()
        latency.labels(action).observe(seconds)
    for operation, seconds, error in hsm_calls:
        hsm.labels(operation).observe(seconds)
        if error:
            errors.labels(operation, error).inc()
    return registry


def test_flush_publishes_exactly_what_single_calls_would():
    rng = random.Random(7)
    bounds = list(LATENCY_BUCKETS) + list(HSM_BUCKETS)
    requests = [(rng.choice(["Decrypt", "Encrypt"]), rng.choice(["Success", "Forbidden.KeyNotFound"]),
                 rng.choice([rng.uniform(0, 12), rng.choice(bounds)])) for _ in range(2000)]
    hsm_calls = [(rng.choice(["encrypt", "random"]), rng.choice([rng.uniform(0, 6), rng.choice(bounds)]),
                  rng.choice([None, None, "GeneralError"])) for _ in range(2000)]
    metrics = Metrics({"Decrypt", "Encrypt"})
    for index, (action, code, seconds) in enumerate(requests):
        metrics.request(action, code, seconds)
        if index == 1000:
            metrics.flush()  # publishing in several rounds adds up
    for operation, seconds, error in hsm_calls:
        metrics.hsm_operation(operation, seconds, error)
    metrics.flush()
    published, expected = samples(metrics.registry), samples(reference(requests, hsm_calls))
    assert published.keys() == expected.keys()
    for name, value in expected.items():
        assert published[name] == pytest.approx(value, rel=1e-9), name


def test_nothing_is_published_before_a_flush_and_exposition_flushes():
    metrics = Metrics({"Decrypt"})
    metrics.request("Decrypt", "Success", 0.003)
    line = 'hsmkms_requests_total{action="Decrypt",code="Success"}'
    assert line not in samples(metrics.registry)
    text = metrics.exposition()[0].decode()
    assert f"{line} 1.0" in text
    assert 'hsmkms_request_duration_seconds_bucket{action="Decrypt",le="0.005"} 1.0' in text
    assert 'hsmkms_request_duration_seconds_bucket{action="Decrypt",le="0.002"} 0.0' in text


def test_an_action_the_service_does_not_know_is_counted_as_unknown():
    metrics = Metrics({"Decrypt"})
    metrics.request("NoSuchAction<script>", "InvalidAction.NotFound", 0.001)
    text = metrics.exposition()[0].decode()
    assert 'action="unknown",code="InvalidAction.NotFound"} 1.0' in text
    assert "NoSuchAction" not in text


def test_the_background_flusher_publishes_without_being_asked(monkeypatch):
    monkeypatch.setattr(metrics_module, "FLUSH_INTERVAL_S", 0.02)
    metrics = Metrics({"Encrypt"})
    metrics.start_flushing()
    metrics.request("Encrypt", "Success", 0.001)
    key = 'hsmkms_requests_total{action="Encrypt",code="Success"}'
    deadline = time.monotonic() + 5
    while samples(metrics.registry).get(key) != 1.0:
        assert time.monotonic() < deadline, "not published within 5 s"
        time.sleep(0.01)


def test_a_scrape_during_a_flush_that_counts_a_request_holds_its_latency():
    metrics = Metrics({"Decrypt"})
    for _ in range(3):
        metrics.request("Decrypt", "Success", 0.002)
    seen = []
    counter = metrics._requests
    original_labels = counter.labels

    def labels_then_scrape(*values):
        child = original_labels(*values)
        original_inc = child.inc

        def inc(amount=1):
            original_inc(amount)
            seen.append(samples(metrics.registry))  # what a scrape at this moment reads

        child.inc = inc
        return child

    counter.labels = labels_then_scrape
    metrics.flush()
    assert seen, "the flush published no request count"
    for scraped in seen:
        counted = scraped['hsmkms_requests_total{action="Decrypt",code="Success"}']
        assert scraped['hsmkms_request_duration_seconds_count{action="Decrypt"}'] >= counted == 3
