"""Operator commands and crash consistency on a real deployment (subprocesses, own SoftHSM token).

A crash is a child process that dies with os._exit at a chosen point of CreateKey, CreateKeyVersion or a
purge; afterwards the key or version exists in both the HSM and the metadata or in neither, once recovery
(`hsmkms doctor --repair`, or the scheduler) has run, and `hsmkms doctor` finds them consistent.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from alibabacloud_tea_openapi.utils import Utils as TeaUtils

from tests.e2e.conftest import make_sdk
from tests.e2e.sdk import ApiError
from tests.e2e.server import clean_env, provision_server, run_cli

CHILD = Path(__file__).with_name("crash_child.py")
UUID_LEN = 36


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    return provision_server(tmp_path_factory.mktemp("ops"), workers=1)


def cli(deployment, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli(*args, "--config", str(deployment.config), check=check)


def sql(deployment, statement: str, args: tuple = ()) -> list:
    with sqlite3.connect(deployment.data_dir / "hsmkms.db") as conn:
        return conn.execute(statement, args).fetchall()


def token_objects(deployment) -> set[str]:
    result = subprocess.run([sys.executable, str(CHILD), str(deployment.config), "objects"], capture_output=True,
                            text=True, env=clean_env(), timeout=60, check=True)
    return set(result.stdout.split())


def crash(deployment, *args: str) -> None:
    result = subprocess.run([sys.executable, str(CHILD), str(deployment.config), *args], capture_output=True,
                            text=True, env=clean_env(), timeout=60)
    assert result.returncode == 17, result.stderr


def doctor(deployment, *extra: str) -> subprocess.CompletedProcess:
    return cli(deployment, "doctor", *extra, check=False)


def live_versions(deployment) -> set[str]:
    rows = sql(deployment, "SELECT v.version_id FROM key_versions v JOIN keys k USING (key_id)"
                           " WHERE k.destroyed_at IS NULL")
    return {row[0] for row in rows}


def age_journal(deployment, seconds: int = 3600) -> None:
    """What the passing of time does to an interrupted creation's journal entry."""
    sql(deployment, "UPDATE pending_objects SET created_at = created_at - ?", (seconds,))


# --- operator commands ---------------------------------------------------------------------------------


def test_key_commands(deployment):
    key_id = cli(deployment, "key", "create", "--alias", "alias/ops", "--description", "ops key",
                 "--rotation-interval", "30d").stdout.strip()
    listing = cli(deployment, "key", "list").stdout
    line = next(line for line in listing.splitlines() if line.startswith(key_id))
    assert "Enabled" in line and "alias/ops" in line and "ops key" in line
    meta = json.loads(cli(deployment, "key", "describe", "alias/ops").stdout)
    assert (meta["KeyId"], meta["RotationInterval"], meta["AutomaticRotation"]) == (key_id, "2592000s", "Enabled")
    assert cli(deployment, "key", "disable", key_id).stdout.strip() == "Disabled"
    assert cli(deployment, "key", "enable", key_id).stdout.strip() == "Enabled"
    version = cli(deployment, "key", "rotate", key_id).stdout.strip()
    assert json.loads(cli(deployment, "key", "describe", key_id).stdout)["PrimaryKeyVersion"] == version
    assert "will be destroyed at" in cli(deployment, "key", "schedule-deletion", key_id, "--days", "7").stdout
    assert json.loads(cli(deployment, "key", "describe", key_id).stdout)["KeyState"] == "PendingDeletion"
    assert cli(deployment, "key", "cancel-deletion", key_id).stdout.strip() == "Enabled"
    refused = cli(deployment, "key", "enable", str(uuid.uuid4()), check=False)
    assert refused.returncode != 0 and "Forbidden.KeyNotFound" in refused.stderr
    assert cli(deployment, "key", "schedule-deletion", key_id, "--days", "3", check=False).returncode != 0


def test_purge_due_destroys_only_keys_past_their_window(deployment):
    due = cli(deployment, "key", "create").stdout.strip()
    cli(deployment, "key", "rotate", due)
    not_due = cli(deployment, "key", "create").stdout.strip()
    for key_id in (due, not_due):
        cli(deployment, "key", "schedule-deletion", key_id, "--days", "7")
    versions = {row[0] for row in sql(deployment, "SELECT version_id FROM key_versions WHERE key_id = ?", (due,))}
    assert len(versions) == 2 and versions <= token_objects(deployment)
    sql(deployment, "UPDATE keys SET delete_at = ? WHERE key_id = ?", (int(time.time()) - 1, due))

    assert cli(deployment, "purge-due").stdout.split() == ["destroyed", due]
    assert not versions & token_objects(deployment)
    assert "Forbidden.KeyNotFound" in cli(deployment, "key", "describe", due, check=False).stderr
    assert json.loads(cli(deployment, "key", "describe", not_due).stdout)["KeyState"] == "PendingDeletion"
    assert cli(deployment, "purge-due").stdout == ""
    assert doctor(deployment).returncode == 0


def test_rotate_due(deployment):
    key_id = cli(deployment, "key", "create", "--rotation-interval", "7d").stdout.strip()
    before = json.loads(cli(deployment, "key", "describe", key_id).stdout)["PrimaryKeyVersion"]
    assert key_id not in cli(deployment, "rotate-due").stdout
    sql(deployment, "UPDATE keys SET last_rotation_at = last_rotation_at - 8 * 86400 WHERE key_id = ?", (key_id,))
    assert f"rotated {key_id}" in cli(deployment, "rotate-due").stdout
    after = json.loads(cli(deployment, "key", "describe", key_id).stdout)["PrimaryKeyVersion"]
    assert after != before and after in token_objects(deployment)
    assert key_id not in cli(deployment, "rotate-due").stdout


# --- doctor and crash consistency ----------------------------------------------------------------------


def test_doctor_finds_and_removes_a_planted_orphan(deployment):
    assert doctor(deployment).returncode == 0
    subprocess.run([sys.executable, "-c", (
        "import sys, uuid; from hsmkms.app import build_runtime; from hsmkms.settings import load;"
        "rt = build_runtime(load(sys.argv[1])); oid = str(uuid.uuid4());"
        "rt.hsm.create_aes_key(oid, 'hsmkms:cmk:' + str(uuid.uuid4()) + ':' + oid); print(oid)"),
        str(deployment.config)], check=True, env=clean_env(), capture_output=True, timeout=60)
    report = doctor(deployment)
    assert report.returncode == 1 and "orphan HSM object" in report.stdout
    live_before = live_versions(deployment)
    repaired = doctor(deployment, "--repair")
    assert "repaired: destroyed" in repaired.stdout
    assert doctor(deployment).returncode == 0
    assert live_versions(deployment) == live_before <= token_objects(deployment)


@pytest.mark.parametrize("point", ["after-journal", "after-hsm", "before-commit"])
def test_crash_during_create_key(deployment, point):
    keys_before = sql(deployment, "SELECT COUNT(*) FROM keys")[0][0]
    objects_before = token_objects(deployment)
    crash(deployment, "create", point)
    assert sql(deployment, "SELECT COUNT(*) FROM keys")[0][0] == keys_before  # never acknowledged, never listed
    report = doctor(deployment)
    assert report.returncode == 1 and "interrupted operation" in report.stdout
    assert doctor(deployment, "--repair").returncode == 0  # too fresh to roll back: it might still be running
    assert "interrupted operation" in doctor(deployment).stdout
    age_journal(deployment)
    doctor(deployment, "--repair")
    assert doctor(deployment).returncode == 0
    assert token_objects(deployment) == objects_before
    assert sql(deployment, "SELECT COUNT(*) FROM pending_objects")[0][0] == 0


@pytest.mark.parametrize("point", ["after-hsm", "before-commit"])
def test_crash_during_create_key_version(deployment, point):
    key_id = cli(deployment, "key", "create").stdout.strip()
    versions_before = live_versions(deployment)
    crash(deployment, "rotate", point, key_id)
    assert live_versions(deployment) == versions_before
    age_journal(deployment)
    doctor(deployment, "--repair")
    assert doctor(deployment).returncode == 0
    assert live_versions(deployment) <= token_objects(deployment)
    assert cli(deployment, "key", "rotate", key_id).returncode == 0  # the key still works


def test_crash_during_purge(deployment):
    key_id = cli(deployment, "key", "create").stdout.strip()
    cli(deployment, "key", "rotate", key_id)
    versions = {row[0] for row in sql(deployment, "SELECT version_id FROM key_versions WHERE key_id = ?", (key_id,))}
    cli(deployment, "key", "schedule-deletion", key_id, "--days", "7")
    sql(deployment, "UPDATE keys SET delete_at = 0 WHERE key_id = ?", (key_id,))
    crash(deployment, "purge", "after-first-destroy")
    remaining = versions & token_objects(deployment)
    assert len(remaining) == 1  # one destroyed before the crash
    assert "Forbidden.KeyNotFound" in cli(deployment, "key", "describe", key_id, check=False).stderr
    assert "interrupted operation" in doctor(deployment).stdout
    cli(deployment, "purge-due")  # the scheduler's next tick does the same
    assert doctor(deployment).returncode == 0
    assert not versions & token_objects(deployment)


# --- the scheduler inside `hsmkms serve` ---------------------------------------------------------------


def test_serve_runs_the_scheduler(tmp_path):
    live = provision_server(tmp_path / "sched", workers=2, extra_config="[scheduler]\ninterval_seconds = 1\n")
    live.start()
    try:
        client = make_sdk("tea-v3", live)
        doomed = client.call("CreateKey")["KeyMetadata"]["KeyId"]
        client.call("ScheduleKeyDeletion", KeyId=doomed, PendingWindowInDays=7)
        rotating = client.call("CreateKey", EnableAutomaticRotation=True, RotationInterval="7d")["KeyMetadata"]
        with sqlite3.connect(live.data_dir / "hsmkms.db") as conn:
            conn.execute("UPDATE keys SET delete_at = 0 WHERE key_id = ?", (doomed,))
            conn.execute("UPDATE keys SET last_rotation_at = last_rotation_at - 8 * 86400 WHERE key_id = ?",
                         (rotating["KeyId"],))
        deadline = time.monotonic() + 30
        destroyed = rotated = False
        while time.monotonic() < deadline and not (destroyed and rotated):
            time.sleep(0.2)
            try:
                client.call("DescribeKey", KeyId=doomed)
            except ApiError as err:
                destroyed = err.code == "Forbidden.KeyNotFound"
            primary = client.call("DescribeKey", KeyId=rotating["KeyId"])["KeyMetadata"]["PrimaryKeyVersion"]
            rotated = primary != rotating["PrimaryKeyVersion"]
        assert destroyed and rotated
    finally:
        assert live.stop() == 0, live.log()
    assert not live.error_lines()


# --- the nonce table at start-up -----------------------------------------------------------------------


def test_serve_resizes_the_nonce_table_keeping_its_nonces(tmp_path, monkeypatch):
    live = provision_server(tmp_path / "nonces", workers=1, extra_config="[auth]\nnonce_table_mib = 1\n")
    legacy = [live.data_dir / name for name in ("nonces.db", "nonces.db-wal", "nonces.db-shm")]
    for path in legacy:  # what a version with the SQLite nonce store left behind
        path.write_bytes(b"old")
    nonce = uuid.uuid4().hex
    monkeypatch.setattr(TeaUtils, "get_nonce", staticmethod(lambda: nonce))
    table = live.data_dir / "nonces.bin"
    live.start()
    try:
        make_sdk("tea-v3", live).call("DescribeKey", KeyId=live.alias)
    finally:
        assert live.stop() == 0, live.log()
    assert not any(path.exists() for path in legacy)
    assert table_pages(table) == 2048  # 1 MiB of 512-byte pages

    live.env["HSMKMS_AUTH_NONCE_TABLE_MIB"] = "2"
    live.start()
    try:
        with pytest.raises(ApiError) as refused:  # the nonce seen before the restart is still refused
            make_sdk("tea-v3", live).call("DescribeKey", KeyId=live.alias)
        assert refused.value.code == "SignatureNonceUsed"
    finally:
        assert live.stop() == 0, live.log()
    assert table_pages(table) == 4096
    assert not live.error_lines()


def table_pages(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "little")  # after the 16-byte magic of the file header
