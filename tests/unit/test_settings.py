"""Settings: TOML file, HSMKMS_* overrides, validation and the token PIN."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsmkms.settings import PIN_ENV, SOFTHSM_MODULE, Settings, SettingsError, env_name, load

FULL_TOML = """\
data_dir = "data"

[server]
listen = "0.0.0.0:9090"
workers = 3
max_body_bytes = 1000
body_timeout_seconds = 3
tls_min_version = "1.3"

[kms]
region = "cn-shanghai"
account_id = "1234567890123456"

[hsm]
module = "/opt/hsm/lib.so"
token_label = "prod"
pin_file = "secrets/token.pin"

[hsm.softhsm]
token_dir = "softhsm/tokens"

[store]
path = "db/meta.db"

[auth]
clock_skew_seconds = 300

[log]
level = "DEBUG"
"""

PIN_VALUE = "pin-9f8e7d6c"


def write(tmp_path: Path, text: str, name: str = "conf/hsmkms.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_pin_in_environment(monkeypatch):
    monkeypatch.delenv(PIN_ENV, raising=False)


def test_defaults_without_file():
    settings = load(None, environ={})
    assert settings.listen == "127.0.0.1:8080"
    assert settings.workers == 0
    assert settings.max_body_bytes == 64 * 1024
    assert settings.body_timeout_seconds == 10
    assert settings.tls_min_version == "1.2"
    assert settings.region == "cn-hangzhou"
    assert settings.account_id == "1000000000000000"
    assert settings.module == SOFTHSM_MODULE
    assert settings.token_label == "hsmkms"
    assert settings.pin_file is None
    assert settings.softhsm_token_dir is None
    assert settings.softhsm_conf_path is None
    assert settings.clock_skew_seconds == 900
    assert settings.nonce_table_mib == 128
    assert settings.nonces_path == settings.data_dir / "nonces.bin"
    assert settings.log_level == "INFO"
    assert settings.database_path == settings.data_dir / "hsmkms.db"


def test_full_file(tmp_path):
    path = write(tmp_path, FULL_TOML)
    folder = (tmp_path / "conf").resolve()
    settings = load(path, environ={})
    assert settings.data_dir == folder / "data"
    assert settings.listen == "0.0.0.0:9090"
    assert settings.listen_host_port == ("0.0.0.0", 9090)
    assert settings.workers == 3
    assert settings.max_body_bytes == 1000
    assert settings.body_timeout_seconds == 3
    assert settings.tls_min_version == "1.3"
    assert settings.region == "cn-shanghai"
    assert settings.account_id == "1234567890123456"
    assert settings.module == "/opt/hsm/lib.so"
    assert settings.token_label == "prod"
    assert settings.pin_file == folder / "secrets" / "token.pin"
    assert settings.softhsm_token_dir == folder / "softhsm" / "tokens"
    assert settings.database == folder / "db" / "meta.db"
    assert settings.database_path == folder / "db" / "meta.db"
    assert settings.softhsm_conf_path == folder / "data" / "softhsm2.conf"
    assert settings.clock_skew_seconds == 300
    assert settings.log_level == "DEBUG"
    assert settings.source == str(path)


def test_relative_paths_resolve_against_the_file_folder_not_cwd(tmp_path, monkeypatch):
    path = write(tmp_path, 'data_dir = "../state"\n[hsm]\npin_file = "pin"\n', "a/b/hsmkms.toml")
    monkeypatch.chdir(tmp_path)
    settings = load(path, environ={})
    assert settings.data_dir == (tmp_path / "a" / "state").resolve()
    assert settings.pin_file == (tmp_path / "a" / "b" / "pin").resolve()
    assert settings.data_dir.is_absolute() and settings.pin_file.is_absolute()


def test_absolute_paths_kept(tmp_path):
    absolute = (tmp_path / "abs" / "data").resolve()
    path = write(tmp_path, f'data_dir = "{absolute}"\n')
    assert load(path, environ={}).data_dir == absolute


def test_default_database_under_data_dir(tmp_path):
    path = write(tmp_path, 'data_dir = "data"\n')
    settings = load(path, environ={})
    assert settings.database is None
    assert settings.database_path == (tmp_path / "conf" / "data").resolve() / "hsmkms.db"


def test_ipv6_listen(tmp_path):
    path = write(tmp_path, '[server]\nlisten = "[::1]:8443"\n')
    assert load(path, environ={}).listen_host_port == ("::1", 8443)


@pytest.mark.parametrize(
    ("section", "key", "name"),
    [
        ("", "data_dir", "HSMKMS_DATA_DIR"),
        ("server", "listen", "HSMKMS_SERVER_LISTEN"),
        ("hsm", "token_label", "HSMKMS_HSM_TOKEN_LABEL"),
        ("hsm.softhsm", "token_dir", "HSMKMS_HSM_SOFTHSM_TOKEN_DIR"),
        ("store", "path", "HSMKMS_STORE_PATH"),
    ],
)
def test_env_name(section, key, name):
    assert env_name(section, key) == name


def test_environment_overrides_file(tmp_path, monkeypatch):
    path = write(tmp_path, FULL_TOML)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    environ = {
        "HSMKMS_SERVER_LISTEN": "127.0.0.2:7000",
        "HSMKMS_HSM_TOKEN_LABEL": "from-env",
        "HSMKMS_DATA_DIR": "envdata",
        "HSMKMS_HSM_SOFTHSM_TOKEN_DIR": "/srv/tokens",
        "HSMKMS_SERVER_WORKERS": "7",
        "HSMKMS_AUTH_CLOCK_SKEW_SECONDS": "60",
    }
    settings = load(path, environ=environ)
    assert settings.listen == "127.0.0.2:7000"
    assert settings.token_label == "from-env"
    # Relative paths from the environment resolve against the working directory.
    assert settings.data_dir == (work / "envdata").resolve()
    assert settings.softhsm_token_dir == Path("/srv/tokens")
    assert settings.workers == 7
    assert settings.clock_skew_seconds == 60
    # Not overridden: still from the file.
    assert settings.region == "cn-shanghai"
    assert settings.pin_file == (tmp_path / "conf").resolve() / "secrets" / "token.pin"


def test_environment_without_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load(None, environ={"HSMKMS_DATA_DIR": "d", "HSMKMS_KMS_REGION": "cn-beijing"})
    assert settings.data_dir == (tmp_path / "d").resolve()
    assert settings.region == "cn-beijing"
    assert settings.source == "defaults"


def test_unrelated_environment_is_ignored(tmp_path):
    settings = load(None, environ={"HSMKMS_UNKNOWN": "x", "SERVER_LISTEN": "nope", "PATH": "/bin"})
    assert settings.listen == "127.0.0.1:8080"


def test_environ_argument_isolates_from_process_environment(monkeypatch):
    monkeypatch.setenv("HSMKMS_SERVER_LISTEN", "10.0.0.1:1")
    assert load(None, environ={}).listen == "127.0.0.1:8080"


@pytest.mark.parametrize(
    "listen",
    ["nohostport", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1:-1",
     "127.0.0.1:80x"],
)
def test_bad_listen(listen):
    with pytest.raises(SettingsError) as info:
        load(None, environ={"HSMKMS_SERVER_LISTEN": listen})
    assert "listen" in str(info.value)


@pytest.mark.parametrize("workers", ["many", "1.5", "", "0x2"])
def test_non_integer_workers_from_environment(workers):
    with pytest.raises(SettingsError) as info:
        load(None, environ={"HSMKMS_SERVER_WORKERS": workers})
    assert "workers" in str(info.value)


@pytest.mark.parametrize("value", ['"many"', "1.5", "true", "[1]"])
def test_non_integer_workers_in_file(tmp_path, value):
    path = write(tmp_path, f"[server]\nworkers = {value}\n")
    with pytest.raises(SettingsError) as info:
        load(path, environ={})
    assert "workers" in str(info.value)


def test_negative_workers(tmp_path):
    with pytest.raises(SettingsError):
        load(None, environ={"HSMKMS_SERVER_WORKERS": "-1"})


@pytest.mark.parametrize("seconds", ["0", "-1"])
def test_body_timeout_must_be_positive(seconds):
    with pytest.raises(SettingsError, match="body_timeout_seconds"):
        load(None, environ={"HSMKMS_SERVER_BODY_TIMEOUT_SECONDS": seconds})


@pytest.mark.parametrize("version", ["1.1", "1.0", "TLSv1.2", "1.2 ", "tls1.3", ""])
def test_tls_min_version_is_1_2_or_1_3(version):
    with pytest.raises(SettingsError, match="tls_min_version"):
        load(None, environ={"HSMKMS_SERVER_TLS_MIN_VERSION": version})
    assert load(None, environ={"HSMKMS_SERVER_TLS_MIN_VERSION": "1.3"}).tls_min_version == "1.3"


@pytest.mark.parametrize("scheduling", ["idle", "BATCH", "fifo", ""])
def test_scheduling_is_batch_or_default(scheduling):
    with pytest.raises(SettingsError, match="scheduling"):
        load(None, environ={"HSMKMS_SERVER_SCHEDULING": scheduling})
    assert load(None, environ={}).scheduling == "batch"
    assert load(None, environ={"HSMKMS_SERVER_SCHEDULING": "default"}).scheduling == "default"


def test_tls_min_version_as_a_toml_number_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="tls_min_version must be a string"):
        load(write(tmp_path, "[server]\ntls_min_version = 1.2\n"), environ={})


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[server\nlisten = ")
    with pytest.raises(SettingsError) as info:
        load(path, environ={})
    assert "TOML" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(SettingsError):
        load(tmp_path / "absent.toml", environ={})


def test_section_that_is_not_a_table(tmp_path):
    path = write(tmp_path, 'hsm = "x"\n')
    with pytest.raises(SettingsError):
        load(path, environ={})


def test_string_setting_given_a_number(tmp_path):
    path = write(tmp_path, "[server]\nlisten = 8080\n")
    with pytest.raises(SettingsError):
        load(path, environ={})


def test_nonce_table_size_is_bounded():
    assert load(None, environ={"HSMKMS_AUTH_NONCE_TABLE_MIB": "65536"}).nonce_table_mib == 65536
    for size in ("0", "-1", "65537"):
        with pytest.raises(SettingsError, match="nonce_table_mib"):
            load(None, environ={"HSMKMS_AUTH_NONCE_TABLE_MIB": size})


def test_token_label_length_in_bytes():
    assert load(None, environ={"HSMKMS_HSM_TOKEN_LABEL": "x" * 32}).token_label == "x" * 32
    with pytest.raises(SettingsError) as info:
        load(None, environ={"HSMKMS_HSM_TOKEN_LABEL": "x" * 33})
    assert "token_label" in str(info.value)
    # 11 characters, 33 UTF-8 bytes.
    with pytest.raises(SettingsError):
        load(None, environ={"HSMKMS_HSM_TOKEN_LABEL": "€" * 11})


@pytest.mark.parametrize("account_id", ["12ab", "", "-1", "1 2", "12.5", "١٢٣", "12³"])
def test_non_digit_account_id(account_id):
    with pytest.raises(SettingsError) as info:
        load(None, environ={"HSMKMS_KMS_ACCOUNT_ID": account_id})
    assert "account_id" in str(info.value)


@pytest.mark.parametrize("region", ["", "cn:hangzhou"])
def test_bad_region(region):
    with pytest.raises(SettingsError):
        load(None, environ={"HSMKMS_KMS_REGION": region})


# --- PIN -----------------------------------------------------------------------------------------------


def test_pin_from_environment(monkeypatch):
    monkeypatch.setenv(PIN_ENV, PIN_VALUE)
    assert Settings().read_pin() == PIN_VALUE


def test_pin_from_file(tmp_path):
    pin_file = tmp_path / "token.pin"
    pin_file.write_text(f"  {PIN_VALUE}\n", encoding="utf-8")
    assert Settings(pin_file=pin_file).read_pin() == PIN_VALUE


def test_pin_file_from_toml(tmp_path):
    path = write(tmp_path, '[hsm]\npin_file = "token.pin"\n')
    (tmp_path / "conf" / "token.pin").write_text(PIN_VALUE + "\n", encoding="utf-8")
    assert load(path, environ={}).read_pin() == PIN_VALUE


def test_environment_pin_wins_over_file(tmp_path, monkeypatch):
    pin_file = tmp_path / "token.pin"
    pin_file.write_text("file-pin", encoding="utf-8")
    monkeypatch.setenv(PIN_ENV, PIN_VALUE)
    assert Settings(pin_file=pin_file).read_pin() == PIN_VALUE


def test_empty_environment_pin_falls_back_to_file(tmp_path, monkeypatch):
    pin_file = tmp_path / "token.pin"
    pin_file.write_text(PIN_VALUE, encoding="utf-8")
    monkeypatch.setenv(PIN_ENV, "")
    assert Settings(pin_file=pin_file).read_pin() == PIN_VALUE


def test_pin_is_not_a_toml_setting(tmp_path):
    path = write(tmp_path, f'[hsm]\npin = "{PIN_VALUE}"\n')
    with pytest.raises(SettingsError):
        load(path, environ={}).read_pin()


def test_missing_pin(monkeypatch):
    monkeypatch.setenv(PIN_ENV, "")
    with pytest.raises(SettingsError) as info:
        Settings().read_pin()
    message = str(info.value)
    assert PIN_ENV in message
    assert PIN_VALUE not in message


def test_missing_pin_file(tmp_path):
    with pytest.raises(SettingsError) as info:
        Settings(pin_file=tmp_path / "absent.pin").read_pin()
    assert "absent.pin" in str(info.value)
    assert PIN_VALUE not in str(info.value)


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_pin_file(tmp_path, content):
    pin_file = tmp_path / "token.pin"
    pin_file.write_text(content, encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        Settings(pin_file=pin_file).read_pin()
    assert "empty" in str(info.value)


def test_unreadable_pin_file_is_a_directory(tmp_path):
    folder = tmp_path / "pin-dir"
    folder.mkdir()
    with pytest.raises(SettingsError) as info:
        Settings(pin_file=folder).read_pin()
    assert PIN_VALUE not in str(info.value)


def test_pin_file_not_utf8_is_a_settings_error_without_the_pin(tmp_path):
    pin_file = tmp_path / "token.pin"
    pin_file.write_bytes(b"\xff" + PIN_VALUE.encode())
    with pytest.raises(SettingsError) as info:
        Settings(pin_file=pin_file).read_pin()
    assert PIN_VALUE not in str(info.value)


def test_settings_repr_has_no_pin(tmp_path, monkeypatch):
    monkeypatch.setenv(PIN_ENV, PIN_VALUE)
    settings = load(None, environ={PIN_ENV: PIN_VALUE})
    assert PIN_VALUE not in repr(settings)


def test_store_and_nonce_urls(tmp_path):
    path = write(tmp_path, '[store]\nurl = "postgresql://hsmkms@db:5432/kms"\npool_size = 8\n'
                           '[auth]\nnonce_url = "redis://cache:6379/2"\n')
    settings = load(path, environ={})
    assert (settings.store_url, settings.store_pool_size, settings.nonce_url) == \
        ("postgresql://hsmkms@db:5432/kms", 8, "redis://cache:6379/2")
    assert settings.uses_postgres
    from_env = load(None, environ={"HSMKMS_STORE_URL": "postgres://db/kms", "HSMKMS_AUTH_NONCE_URL": "",
                                   "HSMKMS_STORE_POOL_SIZE": "2"})
    assert (from_env.store_url, from_env.store_pool_size, from_env.nonce_url) == ("postgres://db/kms", 2, "")
    defaults = load(None, environ={})
    assert (defaults.store_url, defaults.nonce_url, defaults.uses_postgres) == ("", "", False)


@pytest.mark.parametrize(
    ("variable", "url", "complaint"),
    [
        ("HSMKMS_STORE_URL", "mysql://db/kms", "must start with"),
        ("HSMKMS_STORE_URL", "redis://cache:6379/0", "must start with"),
        ("HSMKMS_STORE_URL", "db.example:5432", "must start with"),
        ("HSMKMS_AUTH_NONCE_URL", "memcached://cache", "must start with"),
        ("HSMKMS_STORE_URL", "postgresql://hsmkms:s3cret@db/kms", "password"),
        ("HSMKMS_STORE_URL", "postgresql://db/kms?user=a&password=s3cret", "password"),
        ("HSMKMS_AUTH_NONCE_URL", "redis://:s3cret@cache:6379/0", "password"),
        ("HSMKMS_STORE_POOL_SIZE", "0", "pool_size"),
    ],
)
def test_bad_store_or_nonce_settings(variable, url, complaint):
    with pytest.raises(SettingsError) as info:
        load(None, environ={variable: url})
    assert complaint in str(info.value)
    assert "s3cret" not in str(info.value)  # a secret is never repeated in a message


def test_the_hsm_lock_file(tmp_path):
    shared = load(write(tmp_path, 'data_dir = "node1"\n[hsm]\nlock_file = "shared/hsm.lock"\n', "n1.toml"), environ={})
    assert shared.hsm_lock_path == (tmp_path / "shared" / "hsm.lock").resolve()
    alone = load(write(tmp_path, 'data_dir = "node2"\n', "n2.toml"), environ={})
    assert alone.hsm_lock_path == (tmp_path / "node2" / "hsm.lock").resolve()


def test_token_profile_follows_the_module_unless_named(tmp_path):
    assert load(environ={}).hsm_profile.name == "softhsm"
    nss = load(environ={"HSMKMS_HSM_MODULE": "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"})
    assert nss.hsm_profile.name == "nss"
    vendor = load(environ={"HSMKMS_HSM_MODULE": "/opt/safenet/lunaclient/lib/libCryptoki2_64.so"})
    assert vendor.hsm_profile.name == "generic"
    assert not (vendor.hsm_profile.file_lock or vendor.hsm_profile.general_error_is_tag_mismatch)
    named = load(write(tmp_path, '[hsm]\nmodule = "/opt/x.so"\nprofile = "softhsm"\ninit_reserved = "a=b"\n'),
                 environ={})
    assert (named.hsm_profile.name, named.init_reserved) == ("softhsm", "a=b")
    with pytest.raises(SettingsError, match="profile must be one of softhsm, nss, generic"):
        load(environ={"HSMKMS_HSM_PROFILE": "luna"})
