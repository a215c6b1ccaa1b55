"""Policies on a live server with one worker: what storing a policy refuses and warns about, kms:ReEncrypt
through the official SDK, and the worker's memory under thousands of hostile 60 KB KeyIds."""

from __future__ import annotations

import http.client
import json
import re
import secrets
from pathlib import Path

import pytest
from alibabacloud_tea_openapi.utils import Utils
from darabonba.request import DaraRequest

from tests.e2e.conftest import make_sdk
from tests.e2e.sdk import ApiError
from tests.e2e.server import provision_server

ARN = "acs:kms:cn-hangzhou:1234567890123456"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = provision_server(tmp_path_factory.mktemp("policy-limits"), workers=1)
    server.start()
    yield server
    assert server.stop() == 0, server.log()
    failures = server.error_lines()
    assert not failures, "\n".join(failures)


def create_access_key(live, policy: dict):
    """The CLI's answer to ``access-key create --policy -`` (not checked: some tests expect a refusal)."""
    return live.cli("access-key", "create", "--policy", "-", stdin=json.dumps(policy), check=False)


def credentials(printed: str) -> tuple[str, str]:
    return (re.search(r"AccessKeyId: (\S+)", printed).group(1), re.search(r"AccessKeySecret: (\S+)", printed).group(1))


def refused(client, action: str, **params) -> ApiError:
    with pytest.raises(ApiError) as caught:
        client.call(action, **params)
    return caught.value


# --- storing a policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement, message",
    [
        ({"Effect": "Deny", "Action": "kms:Decrpyt", "Resource": "*"},
         "Statement 2: Action 'kms:Decrpyt' is not a KMS action (did you mean 'kms:Decrypt'?)"),
        ({"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "acs:kms:*:*:kye/*"},
         "Statement 2: Resource 'acs:kms:*:*:kye/*' can match no KMS resource"),
    ],
)
def test_a_policy_that_would_deny_nothing_is_refused_by_create_and_set(live, statement, message):
    policy = {"Version": "1", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}, statement]}
    created = create_access_key(live, policy)
    assert created.returncode != 0 and "AccessKeyId" not in created.stdout
    assert f"invalid policy: {message}" in created.stderr
    access_key_id, _ = credentials(live.cli("access-key", "create").stdout)
    updated = live.cli("access-key", "policy", "set", access_key_id, "-", stdin=json.dumps(policy), check=False)
    assert updated.returncode != 0 and f"invalid policy: {message}" in updated.stderr
    shown = json.loads(live.cli("access-key", "policy", "show", access_key_id).stdout)
    assert shown["Statement"][0]["Action"] == "kms:*"  # the policy it had


def test_re_encrypt_around_a_decrypt_deny_is_warned_about_and_closed_by_denying_kms_re_encrypt(live):
    """The issue's bypass: kms:* allowed, kms:Decrypt denied on key B.  Storing that policy warns; with a Deny on
    kms:ReEncrypt too, B's blob can no longer be re-encrypted under A (and no warning)."""
    admin = make_sdk("tea-v3", live)
    key_a = admin.call("CreateKey")["KeyMetadata"]["KeyId"]
    key_b = admin.call("CreateKey")["KeyMetadata"]["KeyId"]
    data_key = admin.call("GenerateDataKey", KeyId=key_b)
    leaky = {"Version": "1", "Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": f"{ARN}:key/{key_b}"},
    ]}
    created = create_access_key(live, leaky)
    assert created.returncode == 0, created.stderr
    assert "warning: Statement 2 denies kms:Decrypt, but statement 1 still allows kms:ReEncryptFrom" in created.stderr
    assert f"(for example {ARN}:key/{key_b})" in created.stderr
    assert "warning" not in created.stdout
    client = make_sdk("tea-v3", live, *credentials(created.stdout))
    # What the warning says: the Deny is no Deny.
    assert refused(client, "Decrypt", CiphertextBlob=data_key["CiphertextBlob"]).code == "Forbidden.NoPermission"
    moved = client.call("ReEncrypt", CiphertextBlob=data_key["CiphertextBlob"], DestinationKeyId=key_a)
    assert client.call("Decrypt", CiphertextBlob=moved["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]

    closed = {"Version": "1", "Statement": [
        leaky["Statement"][0],
        {"Effect": "Deny", "Action": ["kms:Decrypt", "kms:ReEncrypt"], "Resource": f"{ARN}:key/{key_b}"},
    ]}
    access_key_id, secret = credentials(created.stdout)
    stored = live.cli("access-key", "policy", "set", access_key_id, "-", stdin=json.dumps(closed))
    assert "warning" not in stored.stderr and json.loads(stored.stdout) == closed
    for name in ("tea-v3", "tea-v2", "legacy"):
        client = make_sdk(name, live, access_key_id, secret)
        err = refused(client, "ReEncrypt", CiphertextBlob=data_key["CiphertextBlob"], DestinationKeyId=key_a)
        assert (err.status, err.code) == (403, "Forbidden.NoPermission"), name
        assert f"This operation for {ARN}:key/{key_b} is forbidden" in err.message
        # kms:ReEncrypt also means ReEncryptTo: B cannot be the destination either; A's blobs still move.
        blob_a = client.call("Encrypt", KeyId=key_a, Plaintext="YQ==")["CiphertextBlob"]
        assert refused(client, "ReEncrypt", CiphertextBlob=blob_a, DestinationKeyId=key_b).status == 403
        assert client.call("ReEncrypt", CiphertextBlob=blob_a, DestinationKeyId=key_a)["KeyId"] == key_a

    leaky_again = live.cli("access-key", "policy", "set", access_key_id, "-", stdin=json.dumps(leaky))
    assert "warning: Statement 2 denies kms:Decrypt" in leaky_again.stderr
    assert json.loads(leaky_again.stdout) == leaky


# --- memory under hostile KeyIds ------------------------------------------------------------------------------

KEY_ID_CHARS = 60 * 1024
CALLS = 5000
MAX_GROWTH_MIB = 20
SIGNATURE_ALGORITHM = "ACS3-HMAC-SHA256"


class SignedLoop:
    """DescribeKey on one kept-alive connection, built and signed as the Tea SDK builds and signs a V3 request
    with a form body, with the SDK's own functions (``alibabacloud_tea_openapi.utils.Utils``).

    Through the SDK itself a call with a 60 KB KeyId costs about 20 ms of client CPU (urllib3 checks and
    re-encodes the 60 KB URL character by character), and through its V1 signer 14 ms (which percent-encodes
    the 60 KB twice in Python), so 5,000 calls would take 70-100 s; the server answers one in about 1 ms.
    With the KeyId in a form body, V3 hashes it instead."""

    def __init__(self, live, access_key_id: str, secret: str):
        self.live, self.access_key_id, self.secret = live, access_key_id, secret
        self.connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)

    def call(self, action: str = "DescribeKey", **params: str) -> tuple[int, dict]:
        request = DaraRequest()
        request.method, request.pathname, request.query = "POST", "/", {}
        request.body = Utils.to_form(params)
        payload_hash = Utils.hash(request.body.encode("utf-8"), SIGNATURE_ALGORITHM).hex()
        request.headers = {
            "host": self.live.endpoint, "x-acs-version": "2016-01-20", "x-acs-action": action,
            "x-acs-date": Utils.get_timestamp(), "x-acs-signature-nonce": Utils.get_nonce(),
            "accept": "application/json", "content-type": "application/x-www-form-urlencoded",
            "x-acs-content-sha256": payload_hash,
        }
        request.headers["Authorization"] = Utils.get_authorization(request, SIGNATURE_ALGORITHM, payload_hash,
                                                                   self.access_key_id, self.secret)
        self.connection.request("POST", "/", body=request.body, headers=request.headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def describe_key(self, key_id: str) -> tuple[int, str]:
        status, body = self.call(KeyId=key_id)
        return status, body.get("Code", "")


def worker_rss_kib(live) -> int:
    """VmRSS of the one worker process (the server's only child)."""
    children = [status for status in Path("/proc").glob("[0-9]*/status")
                if _field(status, "PPid") == str(live.process.pid)]
    assert len(children) == 1, [str(c) for c in children]
    return int(_field(children[0], "VmRSS").split()[0])


def _field(status: Path, name: str) -> str:
    try:
        for line in status.read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:  # a process that ended meanwhile
        pass
    return ""


def hostile_key_ids(count: int):
    """Unique KeyIds of 60 KB (a letter first: no key id, no alias, nothing a policy below allows)."""
    for _ in range(count):
        yield "x" + secrets.token_urlsafe(KEY_ID_CHARS)[: KEY_ID_CHARS - 1]


def test_worker_memory_stays_bounded_under_unique_60_kb_key_ids(live):
    """Each call names a KeyId never seen before, through a restricted key's policy and through the default
    one.  The policy's decision memory used to keep every one of them (1,200 such calls grew a worker from 57
    to 137 MiB); now no reference longer than any real one reaches a lookup or a policy at all."""
    restricted_policy = {"Version": "1", "Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": ["acs:kms:*:*:key/0*", "acs:kms:*:*:alias/*"]},
        {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"},
    ]}
    created = create_access_key(live, restricted_policy)
    assert created.returncode == 0, created.stderr
    loops = [SignedLoop(live, *credentials(created.stdout)),
             SignedLoop(live, live.access_key_id, live.access_key_secret)]
    expected = [(400, "InvalidParameter")] * 2
    key_id = next(hostile_key_ids(1))
    for loop, answer in zip(loops, expected, strict=True):  # the official SDK gets the same answers
        err = refused(make_sdk("tea-v3", live, loop.access_key_id, loop.secret), "DescribeKey", KeyId=key_id)
        assert (err.status, err.code) == answer == loop.describe_key(key_id)

    def run(count: int) -> None:
        for n, key_id in enumerate(hostile_key_ids(count)):
            assert loops[n % 2].describe_key(key_id) == expected[n % 2]

    run(300)  # the allocator's arenas and every lazily built structure reach their working size
    before = worker_rss_kib(live)
    run(CALLS)
    grown_mib = (worker_rss_kib(live) - before) / 1024
    assert grown_mib < MAX_GROWTH_MIB, f"the worker grew by {grown_mib:.1f} MiB over {CALLS} calls"
    for loop in loops:
        loop.connection.close()


def test_the_loop_is_answered_like_the_sdk(live):
    """A real key through the loop: a genuine 200, so its requests are signed as the SDK signs them."""
    loop = SignedLoop(live, live.access_key_id, live.access_key_secret)
    key_id = make_sdk("tea-v3", live).call("CreateKey")["KeyMetadata"]["KeyId"]
    status, body = loop.call(KeyId=key_id)  # signed as the SDK signs: a genuine 200
    assert status == 200 and body["KeyMetadata"]["KeyId"] == key_id
    loop.connection.close()
