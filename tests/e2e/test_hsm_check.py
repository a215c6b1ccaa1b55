"""`hsmkms hsm check` on both tokens (through the CLI), on a token without GCM (a test double), and on a
token whose profile does not fit it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hsmkms.cli import main
from hsmkms.hsm.pkcs11.check import run_check
from hsmkms.hsm.profiles import GENERIC
from tests import hsm_double
from tests.conftest import TOKENS
from tests.e2e.server import clean_env, provision_server

CRASH_CHILD = Path(__file__).with_name("crash_child.py")
OPTIONAL = ["CKM_RSA_PKCS_KEY_PAIR_GEN", "CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS", "CKM_RSA_PKCS_OAEP", "CKM_RSA_X_509",
            "CKM_EC_KEY_PAIR_GEN", "CKM_ECDSA", "CKM_GENERIC_SECRET_KEY_GEN", "CKM_SHA224_HMAC", "CKM_SHA256_HMAC",
            "CKM_SHA384_HMAC", "CKM_SHA512_HMAC"]  # asymmetric and HMAC keys: notes, not requirements
CHECKS = ["token found", "CKM_AES_KEY_GEN", "CKM_AES_GCM", *OPTIONAL, "test key: AES-256 token object",
          "CKA_SENSITIVE true",
          "CKA_EXTRACTABLE false", "CKA_MODIFIABLE false", "CKA_ALLOWED_MECHANISMS", "CKA_VALUE unreadable",
          "C_WrapKey refused", "AES-GCM with AAD", "wrong AAD refused", "C_GenerateRandom",
          "C_UnwrapKey (RSA, key import)", "object lookup by CKA_ID",
          "two processes at once", "test key removed"]


def token_objects(config: Path) -> list[str]:
    listed = subprocess.run([sys.executable, str(CRASH_CHILD), str(config), "objects"], capture_output=True,
                            text=True, env=clean_env(), timeout=60, check=True)
    return sorted(listed.stdout.split())


@pytest.mark.parametrize("token", TOKENS)
def test_hsm_check_passes_on_the_test_tokens(token, tmp_path):
    live = provision_server(tmp_path / token, workers=1, token=token)  # configured and initialised, not served
    before = token_objects(live.config)
    checked = live.cli("hsm", "check", "--json", "--rounds", "50")
    report = json.loads(checked.stdout)
    assert report["ok"] is True, checked.stdout
    assert [finding["name"] for finding in report["findings"]] == CHECKS
    assert all(f["ok"] or not f["required"] for f in report["findings"])
    # Both test tokens offer every mechanism of asymmetric and HMAC keys.
    assert [(f["name"], f["ok"], f["required"]) for f in report["findings"] if f["name"] in OPTIONAL] == [
        (name, True, False) for name in OPTIONAL]
    assert report["profile"] == token and report["module"].endswith(".so")
    for figure in ("encrypt p50 (us)", "decrypt p99 (us)", "round trips a second, two processes"):
        assert report["figures"][figure] > 0
    assert any(name.startswith("one object lookup") for name in report["figures"])
    unwrap = next(f for f in report["findings"] if f["name"] == "C_UnwrapKey (RSA, key import)")
    assert unwrap["ok"] and not unwrap["required"]
    assert unwrap["detail"] == {  # SoftHSM 2.6.1 refuses OAEP with SHA-256 in C_UnwrapKey
        "softhsm": "key import with RSAES_OAEP_SHA_1, RSAES_PKCS1_V1_5; not RSAES_OAEP_SHA_256 (refused by "
                   "GetParametersForImport)",
        "nss": "key import with RSAES_OAEP_SHA_256, RSAES_OAEP_SHA_1, RSAES_PKCS1_V1_5",
    }[token]
    table = live.cli("hsm", "check", "--rounds", "10").stdout
    assert "the token can serve hsmkms" in table and "CKM_AES_GCM" in table
    assert token_objects(live.config) == before  # it removed what it made


def config_for(settings, root: Path) -> Path:
    """A configuration naming the session's token (no [hsm.softhsm]: the token is there already)."""
    config = root / "hsmkms.toml"
    config.write_text(f'data_dir = "{root}"\n[hsm]\nmodule = "{settings.module}"\n'
                      f'token_label = "{settings.token_label}"\npin_file = "{settings.pin_file}"\n'
                      f'profile = "{settings.hsm_profile.name}"\ninit_reserved = "{settings.init_reserved}"\n',
                      encoding="utf-8")
    return config


def test_hsm_check_fails_clearly_on_a_token_without_gcm(hsm_settings, hsm, monkeypatch, tmp_path):
    hsm_double.install(monkeypatch, hsm_settings, hsm_double.TokenWithoutGcm)
    result = CliRunner().invoke(main, ["hsm", "check", "--config", str(config_for(hsm_settings, tmp_path))])
    assert result.exit_code == 1, result.output
    assert "CKM_AES_GCM" in result.output and "is not offered (MechanismInvalid)" in result.output
    assert "FAILED" in result.output and "the token CANNOT serve hsmkms" in result.output
    as_json = CliRunner().invoke(main, ["hsm", "check", "--json", "--config", str(config_for(hsm_settings, tmp_path))])
    assert as_json.exit_code == 1
    failed = [f["name"] for f in json.loads(as_json.output)["findings"] if not f["ok"] and f["required"]]
    assert failed == ["CKM_AES_GCM"]


def test_hsm_check_notes_a_mechanism_of_asymmetric_keys_the_token_lacks(base_settings, base_hsm, monkeypatch,
                                                                          tmp_path):
    hsm_double.install(monkeypatch, base_settings, hsm_double.TokenWithoutEcdsa)
    result = CliRunner().invoke(main, ["hsm", "check", "--json", "--rounds", "5",
                                       "--config", str(config_for(base_settings, tmp_path))])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert [(f["name"], f["required"]) for f in report["findings"] if not f["ok"]] == [("CKM_ECDSA", False)]
    assert "not offered: no AsymmetricSign ECDSA_SHA_256" in json.dumps(report)


def test_hsm_check_shows_a_profile_that_does_not_fit_the_token(base_settings, base_hsm):
    """SoftHSM answers a wrong AAD with CKR_GENERAL_ERROR, which the generic profile reads as a device fault."""
    report = run_check(base_settings.module, base_settings.token_label, base_settings.read_pin, profile=GENERIC,
                       rounds=5)
    assert not report.ok
    wrong_aad = next(f for f in report.findings if f.name == "wrong AAD refused")
    assert not wrong_aad.ok and "profile 'generic'" in wrong_aad.detail
