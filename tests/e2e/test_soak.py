"""A bounded soak (scripts/soak.py) in the normal suite: load with verification, then the same with crashes.

Small numbers, so that both runs together stay well under a minute: 8 clients of the three official SDK
flavours for a few seconds.  Every acknowledged blob must decrypt to what it was made from after a restart,
no request may get a 5xx, and after each SIGKILL of the server's process group ``hsmkms doctor --repair``
followed by ``hsmkms doctor`` must find the token and the metadata consistent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
CLIENTS = 8
SEED = 20261129


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("hsmkms_soak_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def run(soak, tmp_path: Path, **options) -> dict:
    results = soak.run_soak(soak.Options(clients=CLIENTS, seed=SEED, json_out=tmp_path / "results.json",
                                         work_dir=tmp_path, verify_threads=8, verify_timeout=60, quiet=True,
                                         **options))
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["requests"] == results["requests"]
    journal = (tmp_path / "blobs.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(journal) == results["blobs_recorded"]
    return results


def assert_clean(soak, results: dict) -> None:
    report = soak.summary(results)
    assert results["failures"] == [], report
    assert results["status_5xx"] == 0, report
    assert results["lost"] == 0 and results["mismatched"] == 0 and results["unverified"] == 0, report
    assert results["blobs_verified"] == results["blobs_recorded"] > 0, report
    assert results["keys_lost"] == 0 and results["versions_lost"] == 0, report
    assert results["doctor_consistent"], report
    assert [stop["returncode"] for stop in results["sigterm"]] == [0, 0], report


def test_soak_load_then_restart_verifies_every_blob(soak, tmp_path):
    results = run(soak, tmp_path, seconds=4, max_requests=600)
    assert_clean(soak, results)
    assert results["transport_errors"] == 0
    ok = results["ok_by_action"]
    assert {"GenerateDataKey", "Encrypt", "Decrypt", "ReEncrypt"} <= set(ok), ok
    assert results["inline_checks"].get("decrypts checked", 0) > 0


def test_soak_with_crashes(soak, tmp_path):
    results = run(soak, tmp_path, seconds=5, max_requests=4000, crashes=2)
    assert_clean(soak, results)
    assert results["crashes"] == 2
    for crash in results["crash_details"]:
        assert crash["returncode"] == -9 and not crash["survivors"], crash
        assert crash["doctor_consistent"], crash
        assert crash["verification"]["blobs_verified"] == crash["verification"]["blobs"] == crash["blobs_before"]
    assert results["transport_errors_unexpected"] == 0
