"""How the benchmark (scripts/bench/run.py) judges: the order of its alternating rounds, how each round's run is
paired with the baseline run of the same round, and what the 10,000-key verdicts ask of the requests."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402


def test_every_other_round_runs_in_the_reverse_order():
    runs = ["bare", "GenerateDataKey", "Decrypt", "Encrypt"]
    orders = [bench.in_turn(runs, number) for number in range(1, 6)]
    assert orders[0] == orders[2] == orders[4] == runs
    assert orders[1] == orders[3] == ["Encrypt", "Decrypt", "GenerateDataKey", "bare"]
    assert runs == ["bare", "GenerateDataKey", "Decrypt", "Encrypt"]  # the caller's list is left as it was


def _run(rps: float, p99_ms: float = 5.0) -> dict:
    return {"rps": rps, "p50_ms": 1.0, "p99_ms": p99_ms, "errors": 0, "exhausted": False, "first_error": "",
            "server_cpu_us_per_request": 1e6 / rps, "cpu": {"others": 0.0}}


def test_a_ratio_is_the_median_of_each_rounds_ratio_to_the_baseline_of_that_round():
    # A machine that drifts: each round's baseline and run move together, and one round is off.
    baseline = [_run(10_000), _run(8_000), _run(12_000), _run(9_000), _run(11_000)]
    measured = [_run(5_000), _run(4_000), _run(3_000), _run(4_500), _run(5_500)]
    combined = bench.combine(measured, baseline)
    assert [run["ratio_to_bare"] for run in measured] == [0.5, 0.5, 0.25, 0.5, 0.5]
    assert combined["ratio_to_bare"] == 0.5
    assert combined["rps"] == 4_500  # the median of the rounds, not their mean (4,400)


def _many_keys_results(decrypt_blobs: int) -> dict:
    one = {action: [_run(6_000) for _ in range(5)] for action in ("GenerateDataKey", "Decrypt")}
    many = {action: [_run(5_900) for _ in range(5)] for action in ("GenerateDataKey", "Decrypt")}
    return {
        "key_creation": {"existing": 1, "created": bench.MANY_KEYS - 1, "total_keys": bench.MANY_KEYS},
        "many_keys_seed": {"blobs": decrypt_blobs},
        "one_key_after_many_keys": {action: bench.combine(rounds) for action, rounds in one.items()},
        "many_keys_runs": {action: bench.combine(many[action], one[action], "ratio_to_one_key") for action in many},
    }


def _many_keys_verdicts(results: dict) -> dict[str, bool]:
    return {check["target"].split()[0]: check["pass"] for check in bench.verdicts(results)
            if f"with {bench.MANY_KEYS} keys" in check["target"]}


def test_decrypt_over_many_keys_passes_only_when_its_requests_name_every_key():
    assert _many_keys_verdicts(_many_keys_results(bench.MANY_KEYS - 1)) == {"GenerateDataKey": True, "Decrypt": True}
    # Blobs of a sample of the keys: the ratio is as good, but it does not say what 10,000 keys cost.
    sampled = _many_keys_results(2000)
    assert _many_keys_verdicts(sampled) == {"GenerateDataKey": True, "Decrypt": False}
    detail = next(check["detail"] for check in bench.verdicts(sampled) if check["target"].startswith("Decrypt with"))
    assert "naming 2,000 of them" in detail


def test_the_machine_is_read_from_lscpu_flat_or_nested_and_named_in_the_summary():
    flat = {"lscpu": [{"field": "Architecture:", "data": "x86_64"}, {"field": "CPU(s):", "data": "2"},
                      {"field": "Model name:", "data": "AMD EPYC"}, {"field": "CPU family:", "data": "25"},
                      {"field": "Model:", "data": "1"}, {"field": "Hypervisor vendor:", "data": "KVM"},
                      {"field": "L2 cache:", "data": "1 MiB (2 instances)"},
                      {"field": "L3 cache:", "data": "32 MiB (1 instance)"}]}
    # lscpu's hierarchic listing nests the model's, the hypervisor's and the caches' fields, and names the caches
    # "L2:" there
    nested = {"lscpu": [{"field": "CPU(s):", "data": "2"},
                        {"field": "Vendor ID:", "data": "AuthenticAMD", "children": [
                            {"field": "Model name:", "data": "AMD EPYC", "children": [
                                {"field": "CPU family:", "data": "25"}, {"field": "Model:", "data": "1"}]}]},
                        {"field": "Virtualization features:", "data": None, "children": [
                            {"field": "Hypervisor vendor:", "data": "KVM"}]},
                        {"field": "Caches (sum of all):", "data": None, "children": [
                            {"field": "L1d:", "data": "64 KiB (2 instances)"},
                            {"field": "L2:", "data": "1 MiB (2 instances)"},
                            {"field": "L3:", "data": "32 MiB (1 instance)"}]}]}
    expected = {"cpu": "AMD EPYC", "family": "25", "model": "1", "cpus": "2", "l2": "1 MiB (2 instances)",
                "l3": "32 MiB (1 instance)", "hypervisor": "KVM"}
    assert bench.machine_from_lscpu(flat) == expected
    assert bench.machine_from_lscpu(nested) == expected
    assert bench.machine_from_lscpu({}) == {}

    found = {**expected, "kernel": "6.1.0"}
    line = bench.describe_machine(found)
    assert line == "AMD EPYC (family 25 model 1), 2 CPUs, L2 1 MiB (2 instances), L3 32 MiB (1 instance), KVM, " \
                   "Linux 6.1.0"
    assert bench.describe_machine({"kernel": "6.1.0"}) == "unknown CPU, Linux 6.1.0"

    results = {"machine": found, "bare": {**_run(5000.0), "server_cpu_us_per_request": 178.0}}
    first = bench.summary(results).splitlines()[0]
    assert first == f"machine: {line}; the bare endpoint took 178 us of server CPU a request"


def test_the_machine_of_this_run_has_at_least_its_kernel():
    found = bench.machine()
    assert found["kernel"]
    assert set(found) <= {"kernel", *bench.MACHINE_FIELDS.values()}
