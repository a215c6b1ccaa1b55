"""The PKCS#11 tokens the integration and end-to-end suites run on, made under a test's temporary directory.

- ``softhsm``: SoftHSMv2, a token directory of its own (hsmkms writes softhsm2.conf and creates the token).
- ``nss``: NSS softoken (libsoftokn3 from libnss3), a database folder of its own made with ``certutil -N``
  (libnss3-tools), whose path reaches the module in C_Initialize's reserved argument.  Its one token that
  stores objects is "NSS Certificate DB".
- ``external``: an operator's own token, named by environment variables (below).  When HSMKMS_TEST_HSM_MODULE is
  set, the suites run on that token only.

    HSMKMS_TEST_HSM_MODULE         the PKCS#11 module
    HSMKMS_TEST_HSM_TOKEN_LABEL    the token's label
    HSMKMS_TEST_HSM_PIN_FILE       a file holding the user PIN
    HSMKMS_TEST_HSM_PROFILE        softhsm, nss or generic (default: by the module's file name)
    HSMKMS_TEST_HSM_INIT_RESERVED  C_Initialize's reserved argument, when the module needs one

The tests keep their objects on such a token in a deployment of their own, "hsmkms-tests" (see
hsmkms/hsm/namespace.py), apart from any other deployment's keys.

Nothing is written outside the temporary directory.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from hsmkms import provision
from hsmkms.hsm.pkcs11 import Pkcs11Backend
from hsmkms.settings import Settings

NSS_TOKEN_LABEL = "NSS Certificate DB"
NSS_MODULE_PATTERNS = ("/usr/lib/*/libsoftokn3.so", "/usr/lib64/libsoftokn3.so", "/usr/lib/libsoftokn3.so")
EXTERNAL_ENV = "HSMKMS_TEST_HSM_MODULE"


def token_names() -> list[str]:
    return ["external"] if os.environ.get(EXTERNAL_ENV) else ["softhsm", "nss"]


def nss_module() -> str:
    for pattern in NSS_MODULE_PATTERNS:
        for path in sorted(glob.glob(pattern)):
            return path
    raise AssertionError("NSS softoken (libsoftokn3.so) is not installed: run `make system-deps` (package libnss3)")


def nss_init_reserved(database: Path) -> str:
    return f"configdir='sql:{database}' certPrefix='' keyPrefix='' secmod='secmod.db' flags="


def make_nss_database(database: Path, pin_file: Path) -> None:
    """An empty NSS database whose one user PIN is the content of ``pin_file``."""
    if shutil.which("certutil") is None:
        raise AssertionError("certutil is not installed: run `make system-deps` (package libnss3-tools)")
    database.mkdir(parents=True, mode=0o700)
    subprocess.run(["certutil", "-N", "-d", f"sql:{database}", "-f", str(pin_file)], check=True,
                   capture_output=True, timeout=60)


def token_settings(name: str, root: Path, softhsm_label: str = "hsmkms-test") -> Settings:
    """Settings for a new token called ``name`` under ``root`` (made here), or the external one."""
    root.mkdir(parents=True, exist_ok=True)
    base = Settings(data_dir=root, pin_file=root / "token.pin")
    if name == "softhsm":
        settings = dataclasses.replace(base, token_label=softhsm_label, softhsm_token_dir=root / "tokens")
        provision.ensure_softhsm_token(settings)  # also points SOFTHSM2_CONF at it
        return settings
    if name == "nss":
        provision.write_private(base.pin_file, secrets.token_urlsafe(18) + "\n")
        make_nss_database(root / "nssdb", base.pin_file)
        return dataclasses.replace(base, module=nss_module(), token_label=NSS_TOKEN_LABEL,
                                   init_reserved=nss_init_reserved(root / "nssdb"))
    if name == "external":
        env = os.environ
        return dataclasses.replace(
            base, module=env[EXTERNAL_ENV], token_label=env["HSMKMS_TEST_HSM_TOKEN_LABEL"],
            pin_file=Path(env["HSMKMS_TEST_HSM_PIN_FILE"]), hsm_profile_name=env.get("HSMKMS_TEST_HSM_PROFILE", ""),
            init_reserved=env.get("HSMKMS_TEST_HSM_INIT_RESERVED", ""), deployment="hsmkms-tests")
    raise ValueError(f"unknown test token {name!r}")


def hsm_config(name: str, data_dir: Path, softhsm_label: str, pin: str | None = None,
               softhsm_dir: str = "data/tokens") -> str:
    """The [hsm] table of a live server's configuration file, for a new token called ``name`` whose files go
    under ``data_dir`` (a SoftHSM token is created by ``hsmkms init``, an NSS database here).  ``pin``: the PIN
    comes from HSMKMS_HSM_PIN, no PIN file."""
    pin_line = "" if pin else 'pin_file = "data/token.pin"\n'
    if name == "softhsm":
        return f'[hsm]\ntoken_label = "{softhsm_label}"\n{pin_line}[hsm.softhsm]\ntoken_dir = "{softhsm_dir}"\n'
    if name == "nss":
        data_dir.mkdir(parents=True, exist_ok=True)
        pin_file = data_dir / "token.pin"
        provision.write_private(pin_file, (pin or secrets.token_urlsafe(18)) + "\n")
        make_nss_database(data_dir / "nssdb", pin_file)
        if pin:
            pin_file.unlink()
        return (f'[hsm]\nmodule = "{nss_module()}"\ntoken_label = "{NSS_TOKEN_LABEL}"\n{pin_line}'
                f'profile = "nss"\ninit_reserved = "{nss_init_reserved(data_dir / "nssdb")}"\n')
    settings = token_settings(name, data_dir)
    return (f'[hsm]\nmodule = "{settings.module}"\ntoken_label = "{settings.token_label}"\n'
            f'pin_file = "{settings.pin_file}"\nprofile = "{settings.hsm_profile.name}"\n'
            f'init_reserved = "{settings.init_reserved}"\ndeployment = "{settings.deployment}"\n')


def backend(settings: Settings, **options) -> Pkcs11Backend:
    """A backend for the token ``settings`` name, as hsmkms makes one (``options``: wait_seconds, lock_path ...)."""
    options.setdefault("profile", settings.hsm_profile)
    options.setdefault("init_reserved", settings.init_reserved or None)
    options.setdefault("deployment", settings.deployment)
    return Pkcs11Backend(settings.module, settings.token_label, settings.read_pin, **options)
