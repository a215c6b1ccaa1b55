"""The benchmark's profiling mode (scripts/bench/stages.py) follows the request path.

Its stage table names the functions a request goes through; when the request path changes under it, a stage
would silently read zero.  This runs the mode on a few requests (its own deployment, in a process of its own,
as ``make bench`` runs it) and checks that every stage each action goes through was seen.  No timing is
judged here: the figures are ``make bench``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

EVERY_REQUEST = {"request id", "parameters and headers", "metadata freshness check", "signature (V1 HMAC)",
                 "access key lookup", "nonce claim (replay check)", "policy",
                 "handler (apart from the HSM)", "HSM (PKCS#11)", "JSON rendering", "audit record", "metrics",
                 "endpoint (the rest)"}


def test_the_profiling_mode_sees_every_stage_of_both_actions(tmp_path):
    out = tmp_path / "stages.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / "stages.py"), "--requests", "60",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result) == {"GenerateDataKey", "Decrypt"}
    for action, run in result.items():
        seen = {stage for stage, us in run["stages_us"].items() if us > 0}
        # A Decrypt finds its key through the blob's version: no key reference to resolve.
        expected = EVERY_REQUEST | ({"blob decoding and key resolution"} if action == "Decrypt" else {"key resolution"})
        assert expected <= seen, f"{action}: stages never reached: {sorted(expected - seen)}"
        assert run["requests"] == 48  # 60, less the fifth run untimed as warm-up
        assert run["thread_cpu_us"] > 0 and run["wall_us"] > 0
    assert "GenerateDataKey: " in done.stdout and "HSM (PKCS#11)" in done.stdout


def test_the_profiling_mode_over_many_keys_times_both_actions_against_one_key(tmp_path):
    out = tmp_path / "stages.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / "stages.py"), "--requests", "30",
                           "--keys", "12", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result) == {"GenerateDataKey", "Decrypt", "GenerateDataKey, 12 keys", "GenerateDataKey, 1 of 12 keys",
                           "Decrypt, 12 keys", "Decrypt, 1 of 12 keys"}
    for name in ("Decrypt, 12 keys", "Decrypt, 1 of 12 keys"):
        run = result[name]
        assert run["requests"] == 24
        assert run["stages_us"]["HSM (PKCS#11)"] > 0 and run["stages_us"]["blob decoding and key resolution"] > 0
