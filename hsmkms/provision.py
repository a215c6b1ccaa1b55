"""Setting a deployment up: the SoftHSM token (when hsmkms manages one), the schema, the service key, and
the development access key and key that ``make run`` provides.  Every step is idempotent.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from hsmkms.app import Runtime, build_runtime
from hsmkms.hsm import pkcs11 as p11
from hsmkms.settings import PIN_ENV, Settings

log = logging.getLogger(__name__)

DEV_ALIAS = "alias/dev"


def write_private(path: Path, text: str) -> None:
    """Create or replace a file readable by its owner only (the mode is set before any byte is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def softhsm_config_text(token_dir: Path) -> str:
    return "\n".join([
        f"directories.tokendir = {token_dir}",
        "objectstore.backend = file",
        "log.level = ERROR",
        "slots.removable = false",
        "",
    ])


def ensure_softhsm_token(settings: Settings) -> bool:
    """Create the SoftHSM configuration and token when hsmkms manages them; True when a token was made."""
    if settings.softhsm_token_dir is None:
        return False
    conf = settings.softhsm_conf_path
    settings.softhsm_token_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.softhsm_token_dir, 0o700)
    expected = softhsm_config_text(settings.softhsm_token_dir)
    if not conf.exists() or conf.read_text(encoding="utf-8") != expected:
        write_private(conf, expected)
    settings.apply_process_environment()
    if p11.token_exists(settings.module, settings.token_label):
        return False
    if not os.environ.get(PIN_ENV) and settings.pin_file is not None and not settings.pin_file.exists():
        # A new development token gets a random PIN in the configured PIN file (mode 0600).
        write_private(settings.pin_file, secrets.token_urlsafe(24) + "\n")
    user_pin = settings.read_pin()
    # The SO PIN is only needed to initialise the token; nobody needs it afterwards.
    p11.initialise_token(settings.module, settings.token_label, secrets.token_urlsafe(24), user_pin)
    log.info("created SoftHSM token %r in %s", settings.token_label, settings.softhsm_token_dir)
    return True


def init(settings: Settings) -> Runtime:
    """Token (SoftHSM), schema and HSM service key; returns an open runtime the caller closes."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_softhsm_token(settings)
    runtime = build_runtime(settings)
    runtime.store.migrate()
    runtime.nonces.prepare(time.time())
    runtime.hsm.open()
    runtime.services.access_keys.ensure_service_key()
    return runtime


@dataclass(frozen=True)
class DevCredentials:
    endpoint: str
    access_key_id: str
    access_key_secret: str
    key_alias: str

    def as_json(self) -> str:
        return json.dumps(
            {
                "Endpoint": self.endpoint,
                "AccessKeyId": self.access_key_id,
                "AccessKeySecret": self.access_key_secret,
                "KeyAlias": self.key_alias,
            },
            indent=2,
        ) + "\n"


def dev_setup(runtime: Runtime, credentials_file: Path, endpoint: str) -> DevCredentials:
    """Make sure a development access key and a key with alias ``alias/dev`` exist; record them."""
    services = runtime.services
    previous = None
    if credentials_file.exists():
        try:
            previous = json.loads(credentials_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    if previous and services.access_keys.exists(previous.get("AccessKeyId", "")):
        access_key_id, secret = previous["AccessKeyId"], previous["AccessKeySecret"]
    else:
        access_key_id, secret = services.access_keys.create("development access key (make run)")
    if runtime.store.get_alias(DEV_ALIAS) is None:
        key = services.keys.create_key(
            key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="Aliyun_KMS",
            protection_level="HSM", description="development key (make run)",
        )
        services.keys.create_alias(DEV_ALIAS, key)
    credentials = DevCredentials(endpoint, access_key_id, secret, DEV_ALIAS)
    write_private(credentials_file, credentials.as_json())
    return credentials

