"""Faults: an HSM that fails or hangs during service, a metadata store that is locked, read-only or full,
graceful shutdown, and the backup and restore drill.  Each fault gives a bounded 503 -- never a hang, a 500
or damage -- and the service recovers by itself once the fault is gone.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
import uuid

import pkcs11
import pytest
from pkcs11 import exceptions as p11

import hsmkms.hsm.pkcs11.backend as hsm_module
from hsmkms.api.auth import v1_signature, v1_string_to_sign
from hsmkms.hsm.backend import HsmConfigurationError
from tests import tokens
from tests.e2e.conftest import make_sdk
from tests.e2e.inprocess import start_in_process
from tests.e2e.sdk import ApiError
from tests.e2e.server import HSMKMS, clean_env, provision_server
from tests.hsm_double import ModuleDouble

PIN = "faults-" + uuid.uuid4().hex


def refused(client, action: str, **params) -> ApiError:
    with pytest.raises(ApiError) as caught:
        client.call(action, **params)
    return caught.value


def ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/readyz", timeout=30) as response:
            return response.status == 200
    except urllib.error.HTTPError as err:
        assert err.code == 503
        return False


def eventually(predicate, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


# --- a fault-injecting wrapper around the PKCS#11 layer ------------------------------------------------


class Faults:
    """Switches the test flips: the device is gone, or every crypto call hangs for a while."""

    def __init__(self):
        self.down = False
        self.hang_seconds = 0.0

    def check(self) -> None:
        if self.down:
            raise p11.DeviceRemoved()

    def maybe_hang(self) -> None:
        self.check()
        if self.hang_seconds:
            time.sleep(self.hang_seconds)


class _Proxy:
    """Wraps a python-pkcs11 object; calls fail while the device is 'down' and results are wrapped too."""

    def __init__(self, target, faults: Faults):
        self._target, self._faults = target, faults

    def _wrap(self, value):
        if isinstance(value, (pkcs11.Token, pkcs11.Session, pkcs11.SecretKey)):
            return _Proxy(value, self._faults)
        return value

    def __getattr__(self, name):
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            if name in ("encrypt", "decrypt"):
                self._faults.maybe_hang()
            else:
                self._faults.check()
            result = attribute(*args, **kwargs)
            if name == "get_objects":
                return [self._wrap(item) for item in result]
            return self._wrap(result)

        return call

    def __getitem__(self, key):
        self._faults.check()
        return self._target[key]


class FaultyModule(ModuleDouble):
    """The process's real, shared module (tests/hsm_double.py): python-pkcs11's objects are wrapped, and so are
    hsmkms's own GCM calls."""

    def __init__(self, real, faults: Faults):
        super().__init__(real)
        self._faults = faults
        self.lib = _Proxy(real.lib, faults)

    def gcm_encrypt(self, *args):
        self._faults.maybe_hang()
        return self.real.gcm_encrypt(*args)

    def gcm_decrypt(self, *args):
        self._faults.maybe_hang()
        return self.real.gcm_decrypt(*args)


@pytest.fixture
def faulty(hsm_settings, hsm, tmp_path, monkeypatch):
    faults = Faults()
    real = hsm_module._library(hsm_settings.module, hsm_settings.init_reserved or None)
    monkeypatch.setattr(hsm_module, "_library", lambda path, reserved=None: FaultyModule(real, faults))
    backend = tokens.backend(hsm_settings, wait_seconds=1)
    server, stop = start_in_process(hsm_settings, backend, tmp_path, expect_errors=True)
    yield server, faults
    stop()


def test_hsm_failing_during_service_gives_503_and_recovers(faulty):
    server, faults = faulty
    client = make_sdk("tea-v3", server)
    key_id = client.call("CreateKey")["KeyMetadata"]["KeyId"]
    blob = client.call("Encrypt", KeyId=key_id, Plaintext="YQ==")["CiphertextBlob"]
    assert ready(server.endpoint)

    faults.down = True
    for action, params in [("Encrypt", {"KeyId": key_id, "Plaintext": "YQ=="}), ("Decrypt", {"CiphertextBlob": blob}),
                           ("GenerateDataKey", {"KeyId": key_id}), ("CreateKey", {})]:
        started = time.monotonic()
        err = refused(client, action, **params)
        assert (err.status, err.code) == (503, "ServiceUnavailableTemporary"), action
        assert time.monotonic() - started < 5
    assert not ready(server.endpoint)

    faults.down = False  # the device is back: no restart, the backend reconnects by itself
    assert eventually(lambda: ready(server.endpoint))
    assert client.call("Decrypt", CiphertextBlob=blob)["Plaintext"] == "YQ=="
    assert client.call("Encrypt", KeyId=key_id, Plaintext="Yg==")["KeyId"] == key_id


def test_a_hanging_hsm_call_does_not_hang_other_requests(faulty):
    server, faults = faulty
    client = make_sdk("tea-v3", server)
    key_id = client.call("CreateKey")["KeyMetadata"]["KeyId"]
    faults.hang_seconds = 4
    slow = threading.Thread(target=lambda: client.call("Encrypt", KeyId=key_id, Plaintext="YQ=="))
    slow.start()
    time.sleep(0.3)  # the slow call now holds the HSM
    started = time.monotonic()
    err = refused(make_sdk("legacy", server), "GenerateDataKey", KeyId=key_id)
    assert (err.status, err.code) == (503, "ServiceUnavailableTemporary")
    assert time.monotonic() - started < 3  # [hsm] wait_seconds = 1 here
    faults.hang_seconds = 0
    slow.join(10)
    assert client.call("GenerateDataKey", KeyId=key_id)["KeyId"] == key_id


def test_real_token_made_unavailable_mid_run(tmp_path):
    live = provision_server(tmp_path / "token", workers=2, pin=PIN)
    live.start()
    try:
        client = make_sdk("tea-v3", live)
        data_key = client.call("GenerateDataKey", KeyId=live.alias)
        tokens = live.data_dir / "tokens"
        away = tmp_path / "tokens-away"
        shutil.move(tokens, away)
        tokens.mkdir()
        try:
            for _ in range(4):  # both workers notice
                started = time.monotonic()
                err = refused(client, "Decrypt", CiphertextBlob=data_key["CiphertextBlob"])
                assert (err.status, err.code) == (503, "ServiceUnavailableTemporary")
                assert time.monotonic() - started < 12
            assert eventually(lambda: not ready(live.endpoint) and not ready(live.endpoint))
        finally:
            shutil.rmtree(tokens)
            shutil.move(away, tokens)
        # Every worker reconnects by itself, at most RECONNECT_INTERVAL_S after its last failed attempt.
        def serves() -> bool:
            try:
                return all(client.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"]
                           == data_key["Plaintext"] for _ in range(6))
            except ApiError:
                return False

        assert eventually(serves, 20)
        # A worker the requests above did not reach reconnects at its own next attempt (at most 1 s apart).
        assert eventually(lambda: ready(live.endpoint) and ready(live.endpoint), 10)
        def counted() -> bool:  # workers publish their figures every FLUSH_INTERVAL_S
            with urllib.request.urlopen(live.url + "/metrics", timeout=30) as response:
                metrics = response.read().decode()
            refusals = re.search(
                r'hsmkms_requests_total\{action="Decrypt",code="ServiceUnavailableTemporary"\} (\S+)', metrics)
            return bool(refusals and float(refusals.group(1)) >= 4
                        and re.search(r'hsmkms_hsm_errors_total\{[^}]*operation="decrypt"[^}]*\} [1-9]', metrics))

        assert eventually(counted, 10)
    finally:
        assert live.stop() == 0
    # Each failed request was a 503 with its cause logged; nothing else went wrong.
    unexpected = [line for line in live.log().splitlines() if "Traceback" in line or "InternalFailure" in line]
    assert not unexpected


# --- the metadata store: locked, read-only, full --------------------------------------------------------


@pytest.fixture
def stored(base_settings, base_hsm, tmp_path):
    settings = dataclasses.replace(base_settings, busy_timeout_ms=300)
    server, stop = start_in_process(settings, base_hsm, tmp_path, expect_errors=True)
    yield server
    stop()


def state_of(server) -> tuple[set[str], int]:
    versions = {v for v, live in server.runtime.store.all_versions().items() if live}
    return versions, len(server.runtime.store.pending_objects())


def assert_intact(server, hsm, before) -> None:
    store = server.runtime.store
    assert store.integrity_ok()
    assert state_of(server) == before  # no half-created key or version
    assert before[0] <= set(hsm.list_key_ids())
    assert server.runtime.services.maintenance.doctor().missing_objects == []


def restrict_connections(monkeypatch, store, *pragmas: str) -> None:
    """Every new connection of the server's store runs ``pragmas`` (each request thread opens its own)."""
    connect = store._connect

    def restricted():
        conn = connect()
        for pragma in pragmas:
            conn.execute(pragma)
        return conn

    monkeypatch.setattr(store, "_connect", restricted)


@pytest.mark.parametrize("fault", ["locked", "read-only"])
def test_store_faults_give_503_and_no_damage(stored, base_hsm, monkeypatch, fault):
    client = make_sdk("tea-v3", stored)
    key_id = client.call("CreateKey")["KeyMetadata"]["KeyId"]
    before = state_of(stored)
    store = stored.runtime.store
    blocker = None
    if fault == "locked":
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    else:
        restrict_connections(monkeypatch, store, "PRAGMA query_only = 1")
    try:
        for action, params in [("CreateKey", {}), ("CreateKeyVersion", {"KeyId": key_id}),
                               ("CreateAlias", {"AliasName": f"alias/f-{uuid.uuid4().hex[:8]}", "KeyId": key_id}),
                               ("DisableKey", {"KeyId": key_id})]:
            started = time.monotonic()
            err = refused(client, action, **params)
            assert (err.status, err.code) == (503, "ServiceUnavailableTemporary"), action
            assert time.monotonic() - started < 5
        # Reads keep working: data keys need no write.
        assert client.call("GenerateDataKey", KeyId=key_id)["KeyId"] == key_id
    finally:
        if blocker is not None:
            blocker.execute("ROLLBACK")
            blocker.close()
        monkeypatch.undo()
    assert_intact(stored, base_hsm, before)
    assert client.call("CreateKeyVersion", KeyId=key_id)["KeyVersion"]["KeyId"] == key_id


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB file system of its own (tmpfs), so that the test can fill it up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_full_disk_gives_503_and_no_damage(base_settings, base_hsm, small_disk):
    server, stop = start_in_process(base_settings, base_hsm, small_disk, expect_errors=True)
    try:
        client = make_sdk("tea-v3", server)
        key_id = client.call("CreateKey")["KeyMetadata"]["KeyId"]
        before = state_of(server)
        ballast = small_disk / "ballast"
        with open(ballast, "wb") as handle, pytest.raises(OSError):
            for _ in range(1024):
                handle.write(b"\0" * 65536)
                handle.flush()
        for action, params in [("CreateKey", {}), ("CreateKeyVersion", {"KeyId": key_id}),
                               ("GenerateDataKey", {"KeyId": key_id})]:
            err = refused(client, action, **params)
            assert (err.status, err.code) == (503, "ServiceUnavailableTemporary"), action
        ballast.unlink()  # space again
        assert_intact(server, base_hsm, before)
        assert client.call("CreateKeyVersion", KeyId=key_id)["KeyVersion"]["KeyId"] == key_id
    finally:
        stop()


# --- graceful shutdown ----------------------------------------------------------------------------------


def signed_body(live, action: str, **params: str) -> bytes:
    values = {"Action": action, "Version": "2016-01-20", "Format": "JSON", "AccessKeyId": live.access_key_id,
              "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": uuid.uuid4().hex,
              "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **params}
    values["Signature"] = v1_signature(live.access_key_secret, v1_string_to_sign("POST", values))
    from urllib.parse import urlencode

    return urlencode(values).encode()


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path):
    live = provision_server(tmp_path / "graceful", workers=1, pin=PIN)
    live.start()
    body = signed_body(live, "GenerateDataKey", KeyId=live.alias)
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    connection.putrequest("POST", "/")
    connection.putheader("Content-Type", "application/x-www-form-urlencoded")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body[:20])  # the request is in flight: half of its body has arrived
    time.sleep(0.5)
    live.process.send_signal(signal.SIGTERM)
    time.sleep(1)
    connection.send(body[20:])
    response = connection.getresponse()
    assert response.status == 200
    data_key = response.read()
    assert b'"Plaintext"' in data_key
    assert live.process.wait(30) == 0
    with pytest.raises(OSError):  # no longer accepting
        http.client.HTTPConnection("127.0.0.1", live.port, timeout=5).request("GET", "/healthz")


def test_a_stop_while_the_workers_start_is_acted_on_once_they_serve(tmp_path):
    """Until granian sets a worker's own signal handlers, after the application is made, a worker runs the
    master's it inherited, which do nothing in it: a SIGTERM then was lost, and the stop waited for the
    master's kill timeout (30 s).  The worker keeps it and stops once it serves."""
    live = provision_server(tmp_path / "early-stop", workers=2, pin=PIN)
    with open(live.log_path, "ab") as log:
        live.process = subprocess.Popen([*HSMKMS, "serve", "--config", str(live.config)], stdout=log,
                                        stderr=subprocess.STDOUT, env=clean_env() | live.env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Spawning worker-2" not in live.log() and time.monotonic() < deadline:
            time.sleep(0.005)
        asked = time.monotonic()
        live.process.send_signal(signal.SIGTERM)  # the workers are still making the application
        assert live.process.wait(20) == 0, live.log()
        assert time.monotonic() - asked < 15
    finally:
        if live.process.poll() is None:
            os.killpg(live.process.pid, signal.SIGKILL)
            live.process.wait()
    assert "was asked to stop while it started" in live.log()


# --- backup and restore ---------------------------------------------------------------------------------


def test_backup_wipe_restore_drill(tmp_path):
    live = provision_server(tmp_path / "drill", workers=2, pin=PIN)
    live.start()
    blobs = []
    try:
        client = make_sdk("tea-v3", live)
        for index in range(5):
            key_id = client.call("CreateKey")["KeyMetadata"]["KeyId"]
            client.call("CreateKeyVersion", KeyId=key_id)
            data_key = client.call("GenerateDataKey", KeyId=key_id, EncryptionContext={"i": str(index)})
            blobs.append((data_key["CiphertextBlob"], {"i": str(index)}, data_key["Plaintext"]))
            message = base64.b64encode(f"drill {index}".encode()).decode()
            blobs.append((client.call("Encrypt", KeyId=key_id, Plaintext=message)["CiphertextBlob"], {}, message))
        access_key_id, secret = live.access_key_id, live.access_key_secret
        printed = live.cli("backup", "--to", str(tmp_path / "backup")).stdout  # online
        assert "SoftHSM token directory" in printed
    finally:
        assert live.stop() == 0

    shutil.rmtree(live.data_dir)  # the disaster
    restored = live.cli("restore", "--from", str(tmp_path / "backup")).stdout
    assert "metadata database" in restored and "SoftHSM token directory" in restored
    assert live.cli("doctor").returncode == 0
    live.start()
    try:
        client = make_sdk("legacy", live, access_key_id=access_key_id, secret=secret)
        for blob, context, plaintext in blobs:
            assert client.call("Decrypt", CiphertextBlob=blob, EncryptionContext=context)["Plaintext"] == plaintext
    finally:
        assert live.stop() == 0
    again = live.cli("restore", "--from", str(tmp_path / "backup"), check=False)
    assert again.returncode != 0 and "--force" in again.stderr
    assert live.cli("backup", "--to", str(tmp_path / "backup"), check=False).returncode != 0  # not empty
    assert (live.data_dir / "nonces.bin").exists()  # the nonces the restored server saw
    live.cli("restore", "--from", str(tmp_path / "backup"), "--force")
    assert not (live.data_dir / "nonces.bin").exists()  # disposable: neither backed up nor left behind


def test_a_token_that_refuses_an_operation_answers_500_with_one_log_line(hsm_settings, hsm, tmp_path, monkeypatch):
    """A configuration error (the token refuses a mechanism or template) is the service's fault, not the
    caller's: InternalFailure, logged as one clear line (stop() fails on a logged traceback)."""
    server, stop = start_in_process(hsm_settings, hsm, tmp_path, expect_errors=True)
    client = make_sdk("tea-v3", server)
    key_id = client.call("CreateKey")["KeyMetadata"]["KeyId"]

    def refuse(*args, **kwargs):
        raise HsmConfigurationError("the token refused the request: MechanismInvalid")

    monkeypatch.setattr(server.runtime.hsm, "gcm_encrypt", refuse)
    err = refused(client, "Encrypt", KeyId=key_id, Plaintext="YQ==")
    assert (err.status, err.code) == (500, "InternalFailure")
    monkeypatch.undo()
    assert client.call("Encrypt", KeyId=key_id, Plaintext="YQ==")["KeyId"] == key_id  # the session stayed open
    stop()
