"""/metrics, /healthz and /readyz: Prometheus figures summed over every worker, on their own listener."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import make_sdk
from tests.e2e.sdk import ApiError
from tests.e2e.server import free_port, provision_server


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def metrics_once(url: str, settled, seconds: float = 10.0) -> str:
    """The exposition once ``settled(text)`` holds, or the last one after ``seconds`` (each worker publishes
    its figures every FLUSH_INTERVAL_S, so a scrape right after a request may not show it yet)."""
    deadline = time.monotonic() + seconds
    while True:
        text = fetch(url)[2]
        if settled(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def sample(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    live = provision_server(tmp_path_factory.mktemp("ops"), workers=2, ops_port=free_port())
    live.start()
    yield live, live.ops_url
    assert live.stop() == 0, live.log()


def test_metrics_add_up_every_worker(observed):
    live, ops = observed
    client = make_sdk("tea-v3", live)
    for _ in range(20):
        data_key = client.call("GenerateDataKey", KeyId=live.alias)
        client.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"])
    with pytest.raises(ApiError):
        client.call("DescribeKey", KeyId="alias/absent")
    status, content_type, _ = fetch(ops + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    metrics = metrics_once(ops + "/metrics", lambda text: (
        sample(text, "hsmkms_requests_total", action="Decrypt", code="Success") >= 20
        and sample(text, "hsmkms_requests_total", action="GenerateDataKey", code="Success") >= 20
        and sample(text, "hsmkms_requests_total", action="DescribeKey", code="Forbidden.AliasNotFound") >= 1))
    assert sample(metrics, "hsmkms_requests_total", action="GenerateDataKey", code="Success") == 20
    assert sample(metrics, "hsmkms_requests_total", action="Decrypt", code="Success") == 20
    assert sample(metrics, "hsmkms_requests_total", action="DescribeKey", code="Forbidden.AliasNotFound") == 1
    assert sample(metrics, "hsmkms_request_duration_seconds_count", action="GenerateDataKey") == 20
    assert sample(metrics, "hsmkms_hsm_operation_duration_seconds_count", operation="encrypt") >= 20
    assert sample(metrics, "hsmkms_hsm_operation_duration_seconds_count", operation="decrypt") >= 20
    # The 20 data keys come from the workers' random pools, filled from the token as they started: `random`
    # counts only the calls that reach the token, at most one refill a worker here.
    assert sample(metrics, "hsmkms_hsm_operation_duration_seconds_count", operation="random") <= 2


def test_made_up_actions_share_one_label(observed):
    live, ops = observed
    for name in ("Nope1", "Nope2", "Nope3"):
        fetch(f"{live.url}/?Action={name}&Version=2016-01-20")
    metrics = metrics_once(ops + "/metrics", lambda text: sample(
        text, "hsmkms_requests_total", action="unknown", code="InvalidAction.NotFound") >= 3)
    assert sample(metrics, "hsmkms_requests_total", action="unknown", code="InvalidAction.NotFound") == 3
    assert "Nope1" not in metrics


def test_health_and_readiness_on_the_operations_listener(observed):
    live, ops = observed
    assert fetch(ops + "/healthz")[0] == 200
    # The master answers from the workers' heartbeats: every worker reports ready.
    status, _, body = fetch(ops + "/readyz")
    assert status == 200 and json.loads(body) == {"workers": 2, "ready": 2}


def test_listeners_are_kept_apart(observed):
    live, ops = observed
    for path in ("/metrics", "/healthz", "/readyz"):
        status, content_type, body = fetch(live.url + path)
        assert (status, json.loads(body)["Code"]) == (400, "InvalidAction.NotFound"), path
    status, _, body = fetch(ops + "/?Action=DescribeKey&Version=2016-01-20")
    assert (status, json.loads(body)["Code"]) == (400, "InvalidAction.NotFound")
