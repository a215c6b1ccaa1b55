"""The ``hsmkms`` command: serve, init, keys and access keys for operators."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from hsmkms import backup, provision
from hsmkms.api.actions import iso_time, key_metadata
from hsmkms.app import Runtime
from hsmkms.backup import BackupError
from hsmkms.errors import KmsError
from hsmkms.hsm.backend import HsmError
from hsmkms.policy import ALLOW_ALL, Policy, PolicyError, parse_policy, policy_warnings
from hsmkms.service.asymmetric import key_usage_for
from hsmkms.service.keys import parse_rotation_interval, validate_alias_name
from hsmkms.settings import Settings, SettingsError, load
from hsmkms.store.base import StoreError
from hsmkms.tls import ensure_dev_certificates

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
    except (SettingsError, HsmError, StoreError, BackupError) as exc:
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
@click.option("--tls", is_flag=True, help="Also make a development CA and server certificate under <data_dir>/tls.")
@click.option("--endpoint", help="The HOST:PORT clients use (default: [server] listen), e.g. a load balancer's.")
def dev_setup(config_path: Path | None, credentials_file: Path, tls: bool, endpoint: str | None) -> None:
    """Initialise and make sure a development access key and alias/dev exist (used by `make run`)."""
    settings = _settings(config_path)
    with _runtime(settings) as runtime:
        host, port = settings.listen_host_port
        credentials = provision.dev_setup(runtime, credentials_file, endpoint or f"{host}:{port}")
    if tls:
        certificates = ensure_dev_certificates(settings.data_dir / "tls", (host, "localhost"))
        click.echo(DEV_TLS_BANNER.format(c=credentials, file=credentials_file, ca=certificates.ca_cert))
    else:
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

DEV_TLS_BANNER = """\
hsmkms development endpoint (HTTPS, certificate signed by a development CA)
  Endpoint        https://{c.endpoint}
  AccessKeyId     {c.access_key_id}
  AccessKeySecret {c.access_key_secret}
  KeyAlias        {c.key_alias}
  CA certificate  {ca}
  (also in {file})

Try it with the official Python SDK (pip install alibabacloud-kms20160120):

  from alibabacloud_kms20160120.client import Client
  from alibabacloud_kms20160120.models import GenerateDataKeyRequest, DecryptRequest
  from alibabacloud_tea_openapi.models import Config
  from darabonba.runtime import RuntimeOptions
  kms = Client(Config(access_key_id="{c.access_key_id}", access_key_secret="{c.access_key_secret}",
                      endpoint="{c.endpoint}", protocol="https"))
  trust = RuntimeOptions(ca="{ca}")
  key = kms.generate_data_key_with_options(GenerateDataKeyRequest(key_id="{c.key_alias}"), trust).body
  print(kms.decrypt_with_options(DecryptRequest(ciphertext_blob=key.ciphertext_blob), trust).body.plaintext
        == key.plaintext)

The legacy SDK (aliyun-python-sdk-core), whose KMS requests always use HTTPS, trusts the CA with
ALIBABA_CLOUD_CA_BUNDLE={ca}
"""


def with_runtime(command):
    """Give a command ``--config`` and an initialised runtime as its first argument; errors become one line."""

    @config_option
    @functools.wraps(command)
    def run(config_path: Path | None, **options):
        with _runtime(_settings(config_path)) as runtime:
            return command(runtime, **options)

    return run


def _echo_json(document) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


@main.group()
def key() -> None:
    """Customer master keys."""


@key.command("create")
@click.option("--alias", help="Alias to give the key, alias/...")
@click.option("--description", default="", help="Description of the key.")
@click.option("--rotation-interval", help="Rotate automatically, e.g. 90d (7d-730d; symmetric keys only).")
@click.option("--spec", "key_spec", default="Aliyun_AES_256", show_default=True,
              help="Aliyun_AES_256, RSA_2048, RSA_3072, EC_P256, EC_P256K, HMAC_SHA_224/256/384/512.")
@click.option("--usage", "key_usage", help="ENCRYPT/DECRYPT, SIGN/VERIFY or GENERATE/VERIFY_MAC (default: the "
                                           "spec's first: ENCRYPT/DECRYPT for RSA, SIGN/VERIFY for EC).")
@with_runtime
def key_create(runtime: Runtime, alias: str | None, description: str, rotation_interval: str | None,
               key_spec: str, key_usage: str | None) -> None:
    """Create a key in the HSM (AES-256 by default, or a key pair, or an HMAC key); prints its id."""
    keys = runtime.services.keys
    if alias is not None:
        validate_alias_name(alias)
    record = keys.create_key(
        key_spec=key_spec, key_usage=key_usage_for(key_spec, key_usage), origin="Aliyun_KMS", protection_level="HSM",
        description=description,
        rotation_interval=None if rotation_interval is None else parse_rotation_interval(rotation_interval),
    )
    if alias is not None:
        keys.create_alias(alias, record)
    click.echo(record.key_id)


@key.command("public-key")
@click.argument("key_ref", metavar="KEY")
@click.option("--version", "version_id", help="The key version (default: the primary one).")
@with_runtime
def key_public_key(runtime: Runtime, key_ref: str, version_id: str | None) -> None:
    """Print an asymmetric key's public key (PEM)."""
    key = runtime.services.keys.resolve(key_ref)
    _, pem = runtime.services.asymmetric.public_key_pem(key, version_id or key.primary_version_id)
    click.echo(pem, nl=False)


@key.command("list")
@with_runtime
def key_list(runtime: Runtime) -> None:
    """One line per key: id, state, primary version, aliases, description."""
    keys, aliases = runtime.services.keys, {}
    for alias in runtime.store.list_aliases(0, 1_000_000)[0]:
        aliases.setdefault(alias.key_id, []).append(alias.alias_name)
    offset = 0
    while True:
        page, total = keys.list_keys(offset, 500)
        for k in page:
            click.echo(f"{k.key_id}  {k.state:<15}  {k.primary_version_id}  "
                       f"{','.join(aliases.get(k.key_id, [])) or '-'}  {k.description}")
        offset += len(page)
        if not page or offset >= total:
            break


@key.command("describe")
@click.argument("key_ref")
@with_runtime
def key_describe(runtime: Runtime, key_ref: str) -> None:
    """KeyMetadata of a key (by id, alias or ARN), as DescribeKey returns it."""
    _echo_json(key_metadata(runtime.services.keys.resolve(key_ref), runtime.services.identity))


@key.command("enable")
@click.argument("key_ref")
@with_runtime
def key_enable(runtime: Runtime, key_ref: str) -> None:
    """Enable a disabled key."""
    click.echo(runtime.services.keys.enable(runtime.services.keys.resolve(key_ref)).state)


@key.command("disable")
@click.argument("key_ref")
@with_runtime
def key_disable(runtime: Runtime, key_ref: str) -> None:
    """Disable a key: it can no longer encrypt or decrypt until enabled again."""
    click.echo(runtime.services.keys.disable(runtime.services.keys.resolve(key_ref)).state)


@key.command("rotate")
@click.argument("key_ref")
@with_runtime
def key_rotate(runtime: Runtime, key_ref: str) -> None:
    """Create a new primary version; ciphertexts of every earlier version still decrypt."""
    click.echo(runtime.services.keys.create_version(runtime.services.keys.resolve(key_ref)).version_id)


@key.command("schedule-deletion")
@click.argument("key_ref")
@click.option("--days", type=click.IntRange(7, 366), required=True, help="Waiting period, 7-366 days.")
@with_runtime
def key_schedule_deletion(runtime: Runtime, key_ref: str, days: int) -> None:
    """Schedule the destruction of a key after a waiting period (cancel with cancel-deletion)."""
    record = runtime.services.keys.schedule_deletion(runtime.services.keys.resolve(key_ref), days)
    click.echo(f"{record.key_id} will be destroyed at {iso_time(record.delete_at)}")


@key.command("cancel-deletion")
@click.argument("key_ref")
@with_runtime
def key_cancel_deletion(runtime: Runtime, key_ref: str) -> None:
    """Cancel a scheduled deletion; the key is enabled again."""
    click.echo(runtime.services.keys.cancel_deletion(runtime.services.keys.resolve(key_ref)).state)


@main.command("purge-due")
@with_runtime
def purge_due(runtime: Runtime) -> None:
    """Destroy, in the HSM, every key whose deletion window has passed (never one whose window has not)."""
    for key_id in runtime.services.maintenance.purge_due():
        click.echo(f"destroyed {key_id}")


@main.command("rotate-due")
@with_runtime
def rotate_due(runtime: Runtime) -> None:
    """Rotate every key whose automatic rotation is due."""
    for key_id in runtime.services.maintenance.rotate_due():
        click.echo(f"rotated {key_id}")


@main.command()
@click.option("--repair", is_flag=True, help="Also fix what is safe to fix (never a live key's object).")
@with_runtime
def doctor(runtime: Runtime, repair: bool) -> None:
    """Compare the token's objects with the metadata; exit 1 when they disagree."""
    report = runtime.services.maintenance.doctor(repair=repair)
    for line in report.lines():
        click.echo(line)
    if report.consistent:
        click.echo("token and metadata are consistent")
    elif not repair:
        sys.exit(1)


@main.group()
def hsm() -> None:
    """The PKCS#11 token."""


@hsm.command("check")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
@click.option("--rounds", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="GCM round trips timed for the latency and throughput figures.")
def hsm_check(config_path: Path | None, as_json: bool, rounds: int) -> None:
    """Check that the token can serve hsmkms (before going live); exit 1 when it cannot."""
    from hsmkms.hsm.pkcs11.check import run_check

    settings = _settings(config_path)
    settings.apply_process_environment()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with _operator_errors():
        report = run_check(settings.module, settings.token_label, settings.read_pin, profile=settings.hsm_profile,
                           init_reserved=settings.init_reserved or None, deployment=settings.deployment,
                           gcm_iv=settings.gcm_iv, lock_path=settings.data_dir / "hsm.lock", rounds=rounds)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.table())
    if not report.ok:
        sys.exit(1)


@main.command("backup")
@config_option
@click.option("--to", "destination", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="An empty or new directory for the backup.")
def backup_command(config_path: Path | None, destination: Path) -> None:
    """Copy the metadata database (online, consistent) and a managed SoftHSM token directory."""
    settings = _settings(config_path)
    with _operator_errors():
        result = backup.backup(settings, destination)
    click.echo(result.advice(settings))


@main.command("restore")
@config_option
@click.option("--from", "source", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True,
              help="A directory made by `hsmkms backup`.")
@click.option("--force", is_flag=True, help="Replace the existing database (the server must be stopped).")
def restore_command(config_path: Path | None, source: Path, force: bool) -> None:
    """Put a backup back in place. Stop the server first; start it again afterwards."""
    settings = _settings(config_path)
    with _operator_errors():
        for line in backup.restore(settings, source, force):
            click.echo(line)


@main.command("migrate-store")
@config_option
def migrate_store_command(config_path: Path | None) -> None:
    """Copy the SQLite metadata ([store] path) into the new PostgreSQL database ([store] url).

    Stop the server first; start the nodes on PostgreSQL afterwards."""
    from hsmkms.migrate_store import MigrationError, migrate_store  # psycopg only for the commands that need it

    settings = _settings(config_path)
    try:
        with _operator_errors():
            copied = migrate_store(settings)
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    for table, count in copied.items():
        click.echo(f"{table}: {count} rows")
    click.echo(f"the metadata is in PostgreSQL now; {settings.database_path} was left as it was. Nonces were "
               f"not carried over: keep the service stopped {settings.clock_skew_seconds} s after the last "
               "request to the old store if a replay of a request signed before the move matters.")


@main.group("access-key")
def access_key() -> None:
    """Access keys that sign API requests."""


@access_key.command("create")
@click.option("--description", default="", help="What the access key is for.")
@click.option("--policy", "policy_file", type=click.File("r", encoding="utf-8"),
              help="RAM-style policy document (JSON file, - for stdin); default: every KMS action on every key.")
@with_runtime
def access_key_create(runtime: Runtime, description: str, policy_file) -> None:
    """Create an access key; the secret is printed this once and stored only sealed by the HSM."""
    policy = ALLOW_ALL if policy_file is None else _read_policy(policy_file)
    access_key_id, secret = runtime.services.access_keys.create(description, policy)
    click.echo(f"AccessKeyId: {access_key_id}\nAccessKeySecret: {secret}")


@access_key.command("list")
@with_runtime
def access_key_list(runtime: Runtime) -> None:
    """One line per access key: id, state, creation date, description (never a secret)."""
    for record in runtime.services.access_keys.list():
        click.echo(f"{record.access_key_id}  {record.state:<8}  {iso_time(record.created_at)}  {record.description}")


@access_key.command("disable")
@click.argument("access_key_id")
@with_runtime
def access_key_disable(runtime: Runtime, access_key_id: str) -> None:
    """Refuse every request signed with this key (Forbidden.AccessKey) until it is enabled again."""
    runtime.services.access_keys.set_enabled(access_key_id, False)
    click.echo("Disabled")


@access_key.command("enable")
@click.argument("access_key_id")
@with_runtime
def access_key_enable(runtime: Runtime, access_key_id: str) -> None:
    """Accept requests signed with this key again."""
    runtime.services.access_keys.set_enabled(access_key_id, True)
    click.echo("Enabled")


@access_key.command("delete")
@click.argument("access_key_id")
@with_runtime
def access_key_delete(runtime: Runtime, access_key_id: str) -> None:
    """Delete the key for good (InvalidAccessKeyId.NotFound afterwards)."""
    runtime.services.access_keys.delete(access_key_id)
    click.echo("Deleted")


@access_key.group("policy")
def access_key_policy() -> None:
    """The RAM-style policy that says what an access key may do."""


@access_key_policy.command("set")
@click.argument("access_key_id")
@click.argument("policy_file", type=click.File("r", encoding="utf-8"))
@with_runtime
def access_key_policy_set(runtime: Runtime, access_key_id: str, policy_file) -> None:
    """Replace the key's policy with the JSON document in POLICY_FILE (- for stdin)."""
    try:
        policy = runtime.services.access_keys.set_policy(access_key_id, policy_file.read())
    except PolicyError as exc:
        raise click.ClickException(f"invalid policy: {exc}") from None
    _warn_about(policy)
    click.echo(policy.to_json())


@access_key_policy.command("show")
@click.argument("access_key_id")
@with_runtime
def access_key_policy_show(runtime: Runtime, access_key_id: str) -> None:
    """Print the key's policy."""
    click.echo(runtime.services.access_keys.policy_of(access_key_id).to_json())


def _read_policy(policy_file) -> Policy:
    try:
        policy = parse_policy(policy_file.read())
    except PolicyError as exc:
        raise click.ClickException(f"invalid policy: {exc}") from None
    _warn_about(policy)
    return policy


def _warn_about(policy: Policy) -> None:
    """A valid policy that does less than it seems to is stored as given, with a warning on stderr."""
    for warning in policy_warnings(policy):
        click.echo(f"warning: {warning}", err=True)


if __name__ == "__main__":
    main()
