"""The ``hsmkms`` command: serve, init, keys and access keys for operators."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from hsmkms import provision
from hsmkms.app import Runtime
from hsmkms.errors import KmsError
from hsmkms.hsm.backend import HsmError
from hsmkms.service.keys import validate_alias_name
from hsmkms.settings import Settings, SettingsError, load
from hsmkms.store.base import StoreError

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="HSMKMS_CONFIG",
    help="TOML configuration file (default: built-in defaults plus HSMKMS_* variables).",
)


def _settings(config_path: Path | None) -> Settings:
    try:
        settings = load(config_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


@contextmanager
def _operator_errors() -> Iterator[None]:
    """Known failures become one clear line and a non-zero exit, not a traceback."""
    try:
        yield
    except KmsError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    except (SettingsError, HsmError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def _runtime(settings: Settings) -> Iterator[Runtime]:
    with _operator_errors():
        runtime = provision.init(settings)
        try:
            yield runtime
        finally:
            runtime.close()


@click.group()
def main() -> None:
    """hsmkms: an Alibaba Cloud KMS API compatible key management service on a PKCS#11 HSM."""


@main.command()
@config_option
def serve(config_path: Path | None) -> None:
    """Serve the KMS API."""
    from hsmkms.server import serve as run_server

    settings = _settings(config_path)
    with _operator_errors():
        run_server(settings)


@main.command()
@config_option
def init(config_path: Path | None) -> None:
    """Create the SoftHSM token (when managed), the schema and the HSM service key."""
    with _runtime(_settings(config_path)):
        click.echo("initialised")


@main.command("dev-setup")
@config_option
@click.option("--credentials", "credentials_file", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Where to write the development credentials (JSON, mode 0600).")
def dev_setup(config_path: Path | None, credentials_file: Path) -> None:
    """Initialise and make sure a development access key and alias/dev exist (used by `make run`)."""
    settings = _settings(config_path)
    with _runtime(settings) as runtime:
        host, port = settings.listen_host_port
        credentials = provision.dev_setup(runtime, credentials_file, f"{host}:{port}")
    click.echo(DEV_BANNER.format(c=credentials, file=credentials_file))


DEV_BANNER = """\
hsmkms development endpoint
  Endpoint        http://{c.endpoint}
  AccessKeyId     {c.access_key_id}
  AccessKeySecret {c.access_key_secret}
  KeyAlias        {c.key_alias}
  (also in {file})

Try it with the official Python SDK (pip install alibabacloud-kms20160120):

  from alibabacloud_kms20160120.client import Client
  from alibabacloud_kms20160120.models import GenerateDataKeyRequest, DecryptRequest
  from alibabacloud_tea_openapi.models import Config
  kms = Client(Config(access_key_id="{c.access_key_id}", access_key_secret="{c.access_key_secret}",
                      endpoint="{c.endpoint}", protocol="http"))
  key = kms.generate_data_key(GenerateDataKeyRequest(key_id="{c.key_alias}")).body
  print(kms.decrypt(DecryptRequest(ciphertext_blob=key.ciphertext_blob)).body.plaintext == key.plaintext)
"""


@main.group()
def key() -> None:
    """Customer master keys."""


@key.command("create")
@config_option
@click.option("--alias", help="Alias to give the key, alias/...")
@click.option("--description", default="", help="Description of the key.")
def key_create(config_path: Path | None, alias: str | None, description: str) -> None:
    """Create a symmetric key (AES-256, in the HSM)."""
    with _runtime(_settings(config_path)) as runtime:
        if alias is not None:
            validate_alias_name(alias)
        record = runtime.services.keys.create_key(
            key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="Aliyun_KMS",
            protection_level="HSM", description=description,
        )
        if alias is not None:
            runtime.services.keys.create_alias(alias, record.key_id)
    click.echo(record.key_id)


@main.group("access-key")
def access_key() -> None:
    """Access keys that sign API requests."""


@access_key.command("create")
@config_option
@click.option("--description", default="", help="What the access key is for.")
def access_key_create(config_path: Path | None, description: str) -> None:
    """Create an access key; the secret is printed this once and stored only sealed by the HSM."""
    with _runtime(_settings(config_path)) as runtime:
        access_key_id, secret = runtime.services.access_keys.create(description)
    click.echo(f"AccessKeyId: {access_key_id}\nAccessKeySecret: {secret}")


if __name__ == "__main__":
    main()
