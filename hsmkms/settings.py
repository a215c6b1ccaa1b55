"""One typed Settings object, read from a TOML file and overridden by ``HSMKMS_*`` environment variables.

Every setting is documented in ``config/hsmkms.example.toml``.  The environment variable for
``[section] key`` is ``HSMKMS_SECTION_KEY`` (``HSMKMS_SERVER_LISTEN``, ``HSMKMS_HSM_TOKEN_LABEL`` ...);
top-level keys drop the section (``HSMKMS_DATA_DIR``).  Relative paths in a file are relative to that file's
folder; relative paths in the environment are relative to the working directory.

The token PIN is not a setting: it comes from ``HSMKMS_HSM_PIN`` or from the file named by
``[hsm] pin_file`` and is read only when the HSM session logs in.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hsmkms.hsm.namespace import DEPLOYMENT_NAME
from hsmkms.hsm.profiles import PROFILES, TokenProfile, profile_for
from hsmkms.store.nonces import MAX_TABLE_PAGES, PAGES_PER_MIB

PIN_ENV = "HSMKMS_HSM_PIN"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TLS_VERSIONS = ("1.2", "1.3")


class SettingsError(Exception):
    """The configuration is unreadable or names an invalid value."""


@dataclass(frozen=True)
class Settings:
    # top level
    data_dir: Path = Path("var")
    # [server]
    listen: str = "127.0.0.1:8080"
    workers: int = 0  # 0: one worker process per CPU core
    max_body_bytes: int = 64 * 1024
    body_timeout_seconds: int = 10  # a request body must arrive whole within this, or is answered 408
    tls_certificate: Path | None = None  # with tls_key: serve HTTPS
    tls_key: Path | None = None
    tls_min_version: str = "1.2"  # "1.2" or "1.3"
    scheduling: str = "batch"  # "batch": the server runs as SCHED_BATCH (Linux); "default": as it was started
    # [kms]
    region: str = "cn-hangzhou"
    account_id: str = "1000000000000000"
    # [hsm]
    module: str = SOFTHSM_MODULE
    hsm_wait_seconds: int = 10  # longest wait for the HSM before a request answers 503
    token_label: str = "hsmkms"
    pin_file: Path | None = None
    hsm_lock_file: Path | None = None  # default: <data_dir>/hsm.lock
    hsm_profile_name: str = ""  # softhsm, nss or generic; "" = by the module's file name (generic if unknown)
    init_reserved: str = ""  # C_Initialize's pReserved: NSS softoken's database ("" = NULL)
    deployment: str = ""  # names this deployment's objects on a shared token; "" = the default deployment
    gcm_iv: str = "host"  # who makes GCM IVs: "host" (the token's RNG, blob format 1) or "token" (format 2)
    # [hsm.softhsm] -- present when hsmkms manages a SoftHSM token of its own
    softhsm_token_dir: Path | None = None
    # [store]
    database: Path | None = None  # default: <data_dir>/hsmkms.db
    store_url: str = ""  # postgresql://...: the metadata in PostgreSQL (several nodes); "": SQLite at database
    store_pool_size: int = 4  # PostgreSQL connections each server worker keeps at most
    busy_timeout_ms: int = 5000  # how long a write waits for another's lock before answering 503
    # [auth]
    clock_skew_seconds: int = 900
    nonce_table_mib: int = 128  # the shared nonce table: about 75,000 nonces a MiB
    nonce_url: str = ""  # redis://... or postgresql://...; "": the file table (SQLite) or the store's database
    # [metrics]
    metrics_listen: str = ""  # host:port of a separate listener for /metrics, /healthz, /readyz; "" = main one
    # [audit]
    audit_path: Path | None = None  # default: <data_dir>/audit.log
    audit_max_bytes: int = 0  # 0: never rotate in-process (use logrotate); > 0 needs workers = 1
    audit_backup_count: int = 10
    # [scheduler]
    scheduler_interval_seconds: int = 60  # 0 disables the in-server scheduler
    # [log]
    log_level: str = "INFO"
    # where the settings came from, for messages
    source: str = field(default="defaults", compare=False)

    @property
    def database_path(self) -> Path:
        return self.database or self.data_dir / "hsmkms.db"

    @property
    def uses_postgres(self) -> bool:
        return bool(self.store_url)

    @property
    def nonces_path(self) -> Path:
        return self.data_dir / "nonces.bin"

    @property
    def hsm_lock_path(self) -> Path:
        """The file lock that processes using the token take around its writes (SoftHSM needs it): every
        process on one token must name the same file, nodes on one machine too (make run-cluster)."""
        return self.hsm_lock_file or self.data_dir / "hsm.lock"

    @property
    def scheme(self) -> str:
        return "https" if self.tls_certificate else "http"

    @property
    def audit_log_path(self) -> Path:
        return self.audit_path or self.data_dir / "audit.log"

    @property
    def softhsm_conf_path(self) -> Path | None:
        return None if self.softhsm_token_dir is None else self.data_dir / "softhsm2.conf"

    @property
    def hsm_profile(self) -> TokenProfile:
        return profile_for(self.module, self.hsm_profile_name)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return _host_port(self.listen)

    @property
    def metrics_host_port(self) -> tuple[str, int]:
        return _host_port(self.metrics_listen)

    def read_pin(self) -> str:
        """The token PIN, from the environment or the PIN file.  Never logged, never stored elsewhere."""
        pin = os.environ.get(PIN_ENV)
        if pin:
            return pin
        if self.pin_file is None:
            raise SettingsError(f"no token PIN: set {PIN_ENV} or [hsm] pin_file")
        try:
            pin = self.pin_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"cannot read the PIN file {self.pin_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"the PIN file {self.pin_file} is not UTF-8 text") from None
        if not pin:
            raise SettingsError(f"the PIN file {self.pin_file} is empty")
        return pin

    def apply_process_environment(self) -> None:
        """Point SoftHSM at our configuration file when hsmkms manages the token."""
        if self.softhsm_conf_path is not None:
            os.environ["SOFTHSM2_CONF"] = str(self.softhsm_conf_path)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


MAX_NONCE_TABLE_MIB = MAX_TABLE_PAGES // PAGES_PER_MIB

# (TOML section, key) -> Settings field.  The environment name is derived from the first two.
_FIELDS: dict[tuple[str, str], str] = {
    ("", "data_dir"): "data_dir",
    ("server", "listen"): "listen",
    ("server", "workers"): "workers",
    ("server", "max_body_bytes"): "max_body_bytes",
    ("server", "body_timeout_seconds"): "body_timeout_seconds",
    ("server", "tls_certificate"): "tls_certificate",
    ("server", "tls_key"): "tls_key",
    ("server", "tls_min_version"): "tls_min_version",
    ("server", "scheduling"): "scheduling",
    ("kms", "region"): "region",
    ("kms", "account_id"): "account_id",
    ("hsm", "module"): "module",
    ("hsm", "token_label"): "token_label",
    ("hsm", "pin_file"): "pin_file",
    ("hsm", "wait_seconds"): "hsm_wait_seconds",
    ("hsm", "lock_file"): "hsm_lock_file",
    ("hsm", "profile"): "hsm_profile_name",
    ("hsm", "init_reserved"): "init_reserved",
    ("hsm", "deployment"): "deployment",
    ("hsm", "gcm_iv"): "gcm_iv",
    ("hsm.softhsm", "token_dir"): "softhsm_token_dir",
    ("store", "path"): "database",
    ("store", "url"): "store_url",
    ("store", "pool_size"): "store_pool_size",
    ("store", "busy_timeout_ms"): "busy_timeout_ms",
    ("auth", "clock_skew_seconds"): "clock_skew_seconds",
    ("auth", "nonce_table_mib"): "nonce_table_mib",
    ("auth", "nonce_url"): "nonce_url",
    ("scheduler", "interval_seconds"): "scheduler_interval_seconds",
    ("metrics", "listen"): "metrics_listen",
    ("audit", "path"): "audit_path",
    ("audit", "max_bytes"): "audit_max_bytes",
    ("audit", "backup_count"): "audit_backup_count",
    ("log", "level"): "log_level",
}
_PATH_FIELDS = {"data_dir", "pin_file", "softhsm_token_dir", "database", "audit_path", "tls_certificate", "tls_key",
                "hsm_lock_file"}
_INT_FIELDS = {"workers", "max_body_bytes", "body_timeout_seconds", "busy_timeout_ms", "store_pool_size",
               "hsm_wait_seconds", "clock_skew_seconds", "nonce_table_mib", "scheduler_interval_seconds",
               "audit_max_bytes", "audit_backup_count"}


def env_name(section: str, key: str) -> str:
    return "_".join(part for part in ("HSMKMS", section.replace(".", "_"), key) if part).upper()


def _lookup(document: dict, section: str, key: str):
    node = document
    for part in filter(None, section.split(".")):
        node = node.get(part, {})
        if not isinstance(node, dict):
            raise SettingsError(f"[{section}] must be a table")
    return node.get(key)


def _coerce(name: str, value, base: Path) -> object:
    if name in _PATH_FIELDS:
        if value in ("", None):
            return None if name != "data_dir" else Path("var")
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    if name in _INT_FIELDS:
        # TOML gives ints (bools and floats are refused, not truncated); the environment gives strings.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isascii() and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise SettingsError(f"{name} must be an integer, not {value!r}")
    if not isinstance(value, str):
        raise SettingsError(f"{name} must be a string, not {value!r}")
    return value


def load(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read ``path`` (optional), then apply ``HSMKMS_*`` overrides from ``environ`` (default os.environ)."""
    environ = os.environ if environ is None else environ
    document: dict = {}
    base = Path.cwd()
    source = "defaults"
    if path is not None:
        file = Path(path)
        try:
            document = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file} is not valid TOML: {exc}") from None
        base = file.resolve().parent
        source = str(file)
    values: dict[str, object] = {}
    for (section, key), name in _FIELDS.items():
        raw = _lookup(document, section, key)
        if raw is not None:
            values[name] = _coerce(name, raw, base)
        env_value = environ.get(env_name(section, key))
        if env_value is not None:
            values[name] = _coerce(name, env_value, Path.cwd())
    settings = dataclasses.replace(Settings(source=source), **values)
    _validate(settings)
    return settings


POSTGRES_SCHEMES = ("postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _validate_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    """Empty, or a URL of one of ``schemes`` without a password (secrets stay out of configuration and URLs:
    libpq reads PGPASSWORD or ~/.pgpass, the Redis client REDISCLI_AUTH)."""
    if not url:
        return
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in schemes:
        raise SettingsError(f"{name} must start with {' or '.join(s + '://' for s in schemes)}")
    credentials, at, _ = rest.split("/", 1)[0].rpartition("@")
    if at and ":" in credentials or re.search(r"[?&]password=", rest):
        raise SettingsError(f"{name} must not hold a password: use PGPASSWORD or ~/.pgpass for PostgreSQL, "
                            "REDISCLI_AUTH for Redis")


def _validate(settings: Settings) -> None:
    for name, address in (("listen", settings.listen), ("[metrics] listen", settings.metrics_listen)):
        if name != "listen" and not address:
            continue
        try:
            host, port = _host_port(address)
        except ValueError:
            raise SettingsError(f"{name} must be HOST:PORT, not {address!r}") from None
        if not host or not 0 <= port <= 65535:
            raise SettingsError(f"{name} must be HOST:PORT, not {address!r}")
    if settings.metrics_listen and settings.metrics_host_port[1] == settings.listen_host_port[1]:
        raise SettingsError("[metrics] listen must use another port than [server] listen")
    if (settings.tls_certificate is None) != (settings.tls_key is None):
        raise SettingsError("[server] tls_certificate and tls_key go together")
    if settings.workers < 0:
        raise SettingsError("workers must be 0 (one per core) or more")
    if settings.max_body_bytes < 1:
        raise SettingsError("max_body_bytes must be positive")
    if settings.body_timeout_seconds < 1:
        raise SettingsError("[server] body_timeout_seconds must be positive")
    if settings.tls_min_version not in TLS_VERSIONS:
        raise SettingsError(f'[server] tls_min_version must be "1.2" or "1.3", not {settings.tls_min_version!r}')
    if settings.busy_timeout_ms < 1 or settings.hsm_wait_seconds < 1:
        raise SettingsError("[store] busy_timeout_ms and [hsm] wait_seconds must be positive")
    if settings.audit_max_bytes < 0 or settings.audit_backup_count < 0:
        raise SettingsError("[audit] max_bytes and backup_count must be 0 or more")
    if settings.audit_max_bytes and settings.workers != 1:
        # Rotation by size is a rename other worker processes cannot see: use logrotate with several workers.
        raise SettingsError("[audit] max_bytes > 0 needs [server] workers = 1; with more, rotate with logrotate")
    if settings.scheduler_interval_seconds < 0:
        raise SettingsError("scheduler interval_seconds must be 0 (off) or more")
    if settings.clock_skew_seconds < 1:
        raise SettingsError("clock_skew_seconds must be positive")
    if not 1 <= settings.nonce_table_mib <= MAX_NONCE_TABLE_MIB:
        raise SettingsError(f"[auth] nonce_table_mib must be 1 to {MAX_NONCE_TABLE_MIB}")
    _validate_url("[store] url", settings.store_url, POSTGRES_SCHEMES)
    _validate_url("[auth] nonce_url", settings.nonce_url, POSTGRES_SCHEMES + REDIS_SCHEMES)
    if not 1 <= settings.store_pool_size <= 100:
        raise SettingsError("[store] pool_size must be 1 to 100")
    if not settings.region or ":" in settings.region:
        raise SettingsError(f"region is not valid: {settings.region!r}")
    if not (settings.account_id.isascii() and settings.account_id.isdigit()):
        raise SettingsError(f"account_id must be digits: {settings.account_id!r}")
    if len(settings.token_label.encode()) > 32:
        raise SettingsError("token_label has at most 32 bytes")
    if settings.deployment and not DEPLOYMENT_NAME.match(settings.deployment):
        raise SettingsError("[hsm] deployment is 1-32 lowercase letters, digits, '-' or '_', starting with a letter "
                            f"or digit, not {settings.deployment!r}")
    if settings.scheduling not in ("batch", "default"):
        raise SettingsError(f'[server] scheduling must be "batch" or "default", not {settings.scheduling!r}')
    if settings.gcm_iv not in ("host", "token"):
        raise SettingsError(f'[hsm] gcm_iv must be "host" or "token", not {settings.gcm_iv!r}')
    if settings.hsm_profile_name and settings.hsm_profile_name not in PROFILES:
        raise SettingsError(f"[hsm] profile must be one of {', '.join(PROFILES)}, not {settings.hsm_profile_name!r}")
