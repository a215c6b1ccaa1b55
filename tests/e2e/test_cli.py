"""The ``hsmkms`` command as an operator uses it: provisioning, keys, access keys, start-up failures."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.e2e.conftest import make_sdk
from tests.e2e.server import HSMKMS, clean_env, provision_server, run_cli

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    """A configured, provisioned deployment that is not serving."""
    return provision_server(tmp_path_factory.mktemp("cli"), workers=1)


def test_dev_setup_is_idempotent(provisioned):
    credentials = provisioned.root / "credentials.json"
    keys_before = {p.name for p in (provisioned.data_dir / "tokens").rglob("*.object")}
    run_cli("dev-setup", "--config", str(provisioned.config), "--credentials", str(credentials))
    again = json.loads(credentials.read_text())
    assert set(again) == {"Endpoint", "AccessKeyId", "AccessKeySecret", "KeyAlias"}
    assert (again["AccessKeyId"], again["AccessKeySecret"]) == (provisioned.access_key_id,
                                                                 provisioned.access_key_secret)
    assert again["Endpoint"] == provisioned.endpoint and again["KeyAlias"] == "alias/dev"
    assert oct(os.stat(credentials).st_mode & 0o777) == "0o600"
    # No second token, key or service key was made.
    assert {p.name for p in (provisioned.data_dir / "tokens").rglob("*.object")} == keys_before


def test_keys_and_access_keys_from_the_cli_serve_requests(provisioned):
    made = run_cli("key", "create", "--config", str(provisioned.config), "--alias", "alias/from-cli",
                   "--description", "made on the command line")
    key_id = made.stdout.strip()
    assert UUID.fullmatch(key_id)
    printed = run_cli("access-key", "create", "--config", str(provisioned.config)).stdout
    access_key_id = re.search(r"AccessKeyId: (\S+)", printed).group(1)
    secret = re.search(r"AccessKeySecret: (\S+)", printed).group(1)
    provisioned.start()
    try:
        client = make_sdk("tea-v3", provisioned, access_key_id=access_key_id, secret=secret)
        meta = client.call("DescribeKey", KeyId="alias/from-cli")["KeyMetadata"]
        assert (meta["KeyId"], meta["Description"]) == (key_id, "made on the command line")
    finally:
        assert provisioned.stop() == 0
    # The secret exists only sealed: no file of the deployment holds it.
    for path in provisioned.data_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_key_create_rejects_a_bad_alias(provisioned):
    result = run_cli("key", "create", "--config", str(provisioned.config), "--alias", "no-prefix", check=False)
    assert result.returncode != 0
    assert "InvalidParameter" in result.stderr and "Traceback" not in result.stderr


def test_wrong_pin_fails_fast_and_quietly(provisioned):
    env = clean_env() | {"HSMKMS_HSM_PIN": "wrong-pin-4711"}
    result = subprocess.run([*HSMKMS, "serve", "--config", str(provisioned.config)], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "refused the PIN" in result.stderr
    assert "wrong-pin-4711" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_missing_token_fails_fast(provisioned, tmp_path):
    config = tmp_path / "other.toml"
    text = provisioned.config.read_text()
    text = text.replace('token_label = "hsmkms-e2e"', 'token_label = "absent"').replace("[hsm.softhsm]", "[unused]")
    config.write_text(text.replace('data_dir = "data"', f'data_dir = "{provisioned.data_dir}"'))
    env = clean_env() | {"SOFTHSM2_CONF": str(provisioned.data_dir / "softhsm2.conf"), "HSMKMS_HSM_PIN": "1234"}
    result = subprocess.run([*HSMKMS, "serve", "--config", str(config)], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode != 0
    assert "no token labelled 'absent'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nlisten=")
    result = run_cli("serve", "--config", str(bad), check=False)
    assert result.returncode != 0 and "not valid TOML" in result.stderr


def test_asymmetric_and_hmac_keys_from_the_cli(provisioned):
    config = str(provisioned.config)
    signer = run_cli("key", "create", "--config", config, "--spec", "EC_P256").stdout.strip()
    assert UUID.fullmatch(signer)
    pem = run_cli("key", "public-key", signer, "--config", config).stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n") and pem.endswith("-----END PUBLIC KEY-----\n")
    mac_key = run_cli("key", "create", "--config", config, "--spec", "HMAC_SHA_256", "--usage",
                      "GENERATE/VERIFY_MAC").stdout.strip()
    described = json.loads(run_cli("key", "describe", mac_key, "--config", config).stdout)
    assert (described["KeySpec"], described["KeyUsage"]) == ("HMAC_SHA_256", "GENERATE/VERIFY_MAC")
    refused = run_cli("key", "create", "--config", config, "--spec", "EC_P256", "--usage", "ENCRYPT/DECRYPT",
                      check=False)
    assert refused.returncode != 0 and "InvalidParameter" in refused.stderr and "Traceback" not in refused.stderr
