"""Three nodes on one PostgreSQL database and one SoftHSM token, behind HAProxy: the cluster as
``make run-cluster`` starts it (tests/e2e/cluster.py), driven by the official SDKs through the balancer.

One scenario, in phases (each bounded in time): a mixed load spread round-robin over the nodes while the node
that runs the background jobs is SIGKILLed; the jobs move to another node, which rotates a due key exactly
once; a nonce used on one node is refused on another; an access key disabled and a key disabled through one
node are refused by the others within 1 s; PostgreSQL restarts under load, which gives 503s for a bounded
time and the nodes recover by themselves; the replay cache (Redis, as the README recommends) stops, and
every request is answered 503 until it is back; finally every acknowledged blob decrypts on the surviving
nodes and again after all the nodes restarted.  PostgreSQL and Redis are private servers the test starts
(and restarts) itself.
"""

from __future__ import annotations

import base64
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

import psycopg
import pytest
from alibabacloud_tea_openapi.utils import Utils as TeaUtils
from aliyunsdkcore.utils import parameter_helper

from tests import services
from tests.e2e.cluster import Cluster, Node
from tests.e2e.sdk import ApiError, LegacySdk, TeaSdk

pytestmark = pytest.mark.e2e

SDK_KINDS = ["tea-v3", "tea-v2", "legacy"]
CLIENTS = 6
LOAD_BEFORE_KILL_S = 4.0
LOAD_AFTER_KILL_S = 4.0
REROUTE_BOUND_S = 3.0  # HAProxy takes a dead node out after 2 failed checks 0.5 s apart
JOB_FAILOVER_BOUND_S = 5.0  # the scheduler ticks every second; a SIGKILLed holder's session ends at once
ROTATION_BOUND_S = 5.0
PROPAGATION_BOUND_S = 1.0
POSTGRES_DOWN_S = 2.0
RECOVERY_BOUND_S = 10.0  # from PostgreSQL answering again to the cluster answering again
TRANSPORT = "no answer"
JOBS_LINE = re.compile(r"process (\d+) now runs the background jobs")


def sdk(kind: str, endpoint: str, access_key_id: str, secret: str):
    if kind == "legacy":
        return LegacySdk(endpoint, access_key_id, secret)
    return TeaSdk(endpoint, access_key_id, secret, signature_algorithm="v2" if kind == "tea-v2" else None)


@dataclass
class Blob:
    blob: str
    context: dict[str, str]
    plaintext: str


@dataclass
class Load:
    """Client threads calling the balancer with a mixed workload; every acknowledged blob is recorded."""

    endpoint: str
    access_key_id: str
    secret: str
    keys: list[str]
    blobs: list[Blob] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (time, code or exception type)
    wrong: list[str] = field(default_factory=list)  # answers that are wrong, not merely failed
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int = CLIENTS) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        client = sdk(SDK_KINDS[index % len(SDK_KINDS)], self.endpoint, self.access_key_id, self.secret)
        while not self._stop.is_set():
            draw = rng.random()
            context = {"app": "cluster", "n": str(rng.randrange(1000))}
            try:
                with self._lock:
                    self.requests += 1
                    key = rng.choice(self.keys)
                    source = rng.choice(self.blobs) if self.blobs else None
                if draw < 0.35:
                    body = client.call("GenerateDataKey", KeyId=key, EncryptionContext=context)
                    self._record(Blob(body["CiphertextBlob"], context, body["Plaintext"]))
                elif draw < 0.6:
                    plaintext = base64.b64encode(rng.randbytes(rng.randint(1, 200))).decode()
                    body = client.call("Encrypt", KeyId=key, Plaintext=plaintext, EncryptionContext=context)
                    self._record(Blob(body["CiphertextBlob"], context, plaintext))
                elif draw < 0.85 and source is not None:
                    body = client.call("Decrypt", CiphertextBlob=source.blob, EncryptionContext=source.context)
                    if body["Plaintext"] != source.plaintext:
                        self.wrong.append(f"Decrypt answered another plaintext for {source.blob[:20]}")
                elif draw < 0.93:
                    client.call("CreateKeyVersion", KeyId=key)
                else:
                    created = client.call("CreateKey", Description="cluster")["KeyMetadata"]["KeyId"]
                    client.call("CreateAlias", AliasName=f"alias/c-{uuid.uuid4().hex[:12]}", KeyId=created)
                    with self._lock:
                        self.keys.append(created)
            except ApiError as exc:
                with self._lock:
                    self.errors.append((time.monotonic(), exc.code))
            except Exception:  # no answer at all (a connection the dying node reset)
                with self._lock:
                    self.errors.append((time.monotonic(), TRANSPORT))

    def _record(self, blob: Blob) -> None:
        with self._lock:
            self.blobs.append(blob)


def decrypt_all(endpoint: str, access_key_id: str, secret: str, blobs: list[Blob]) -> list[str]:
    """Decrypt every blob (4 clients, every SDK in turn); returns what went wrong."""
    problems: list[str] = []

    def work(stripe: int) -> None:
        client = sdk(SDK_KINDS[stripe % len(SDK_KINDS)], endpoint, access_key_id, secret)
        for blob in blobs[stripe::4]:
            try:
                body = client.call("Decrypt", CiphertextBlob=blob.blob, EncryptionContext=blob.context)
                if body["Plaintext"] != blob.plaintext:
                    problems.append(f"wrong plaintext for {blob.blob[:20]}")
            except Exception as exc:
                problems.append(f"{blob.blob[:20]}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return problems


def job_holder_pids(node: Node) -> list[int]:
    return [int(pid) for pid in JOBS_LINE.findall(node.log())]


def wait_until(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def refused_within(call, code: str, timeout: float) -> float:
    """Seconds until ``call()`` is refused with ``code``."""
    def refused() -> bool:
        try:
            call()
        except ApiError as exc:
            return exc.code == code
        return False

    return wait_until(refused, timeout, f"refusal {code}")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL server of this test's own: it is restarted mid-test, which the machine's must never be."""
    private = services.PrivatePostgres(tmp_path_factory.mktemp("postgres"))
    private.start()
    yield private
    private.remove()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    private = services.PrivateRedis(tmp_path_factory.mktemp("redis"))
    yield private
    private.remove()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres, redis):
    url = services.create_database(postgres.url, "hsmkms_cluster")
    ports = [services.free_port() for _ in range(3)]
    deployment = Cluster.provision(tmp_path_factory.mktemp("cluster"), url, ports, services.free_port(),
                                   workers=1, extra_config=f'[scheduler]\ninterval_seconds = 1\n'
                                                           f'[auth]\nnonce_url = "{redis.url}"\n')
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def test_three_nodes(cluster: Cluster, postgres, redis, monkeypatch):
    facts = cluster.credentials
    access_key_id, secret = facts["AccessKeyId"], facts["AccessKeySecret"]
    admin = sdk("tea-v3", cluster.endpoint, access_key_id, secret)
    keys = [admin.call("CreateKey", Description="cluster")["KeyMetadata"]["KeyId"] for _ in range(2)]
    load = Load(cluster.endpoint, access_key_id, secret, keys + [facts["KeyAlias"]])

    # --- a mixed load through the balancer; the node running the background jobs dies mid-run -----------
    load.start()
    time.sleep(LOAD_BEFORE_KILL_S)
    holders = [node for node in cluster.nodes if job_holder_pids(node)]
    assert len(holders) == 1, [node.log() for node in cluster.nodes]
    victim = holders[0]
    killed_at = time.monotonic()
    victim.kill()
    survivors = [node for node in cluster.nodes if node is not victim]
    time.sleep(LOAD_AFTER_KILL_S)
    load.stop()
    assert not load.wrong
    late = [(round(at - killed_at, 3), code) for at, code in load.errors
            if at > killed_at + REROUTE_BOUND_S or at < killed_at]
    assert not late, late  # failures only in the moments the dying node took to leave the balancer
    # ... and only "unavailable" (what HAProxy answers for a request the dying node dropped) or no answer.
    assert {code for _, code in load.errors} <= {"ServiceUnavailableTemporary", "SDK.HttpError", TRANSPORT}
    assert len(load.blobs) > 50 and load.requests > 100
    for node in cluster.nodes:  # every node served its share
        assert len((cluster.root / node.name / "audit.log").read_text().splitlines()) > 10, node.name

    # --- the background jobs moved to a surviving node, which rotates a due key exactly once --------------
    wait_until(lambda: any(job_holder_pids(node) for node in survivors), JOB_FAILOVER_BOUND_S, "job failover")
    due = admin.call("CreateKey", EnableAutomaticRotation=True, RotationInterval="7d")["KeyMetadata"]["KeyId"]
    with psycopg.connect(cluster.store_url, autocommit=True) as conn:
        conn.execute("UPDATE keys SET last_rotation_at = last_rotation_at - 8 * 86400 WHERE key_id = %s", (due,))

    def versions() -> int:
        return int(admin.call("ListKeyVersions", KeyId=due)["TotalCount"])

    wait_until(lambda: versions() == 2, ROTATION_BOUND_S, "the due rotation")
    time.sleep(3)  # three more scheduler ticks on every node
    assert versions() == 2
    rotations = sum(node.log().count(f"key {due} has a new primary version") for node in cluster.nodes)
    assert rotations == 1

    # --- a nonce used on one node is refused on another -----------------------------------------------------
    nonce = uuid.uuid4().hex
    monkeypatch.setattr(TeaUtils, "get_nonce", staticmethod(lambda: nonce))
    monkeypatch.setattr(parameter_helper, "get_uuid", lambda: nonce)
    first, second = survivors
    sdk("tea-v3", first.endpoint, access_key_id, secret).call("DescribeKey", KeyId=keys[0])
    with pytest.raises(ApiError) as replay:
        sdk("tea-v3", second.endpoint, access_key_id, secret).call("DescribeKey", KeyId=keys[0])
    assert (replay.value.status, replay.value.code) == (400, "SignatureNonceUsed")
    monkeypatch.undo()

    # --- what one node changes, the others enforce within 1 s ----------------------------------------------
    created = first.cli("access-key", "create", "--description", "propagation").stdout
    other_id = re.search(r"AccessKeyId: (\S+)", created).group(1)
    other_secret = re.search(r"AccessKeySecret: (\S+)", created).group(1)
    other = sdk("tea-v3", second.endpoint, other_id, other_secret)
    other.call("DescribeKey", KeyId=keys[0])  # cached on the second node
    first.cli("access-key", "disable", other_id)
    assert refused_within(lambda: other.call("DescribeKey", KeyId=keys[0]), "Forbidden.AccessKey",
                          PROPAGATION_BOUND_S) <= PROPAGATION_BOUND_S
    on_second = sdk("tea-v3", second.endpoint, access_key_id, secret)
    on_second.call("Encrypt", KeyId=keys[1], Plaintext="aGk=")  # the key is cached on the second node
    sdk("tea-v3", first.endpoint, access_key_id, secret).call("DisableKey", KeyId=keys[1])
    refused_within(lambda: on_second.call("Encrypt", KeyId=keys[1], Plaintext="aGk="), "Rejected.Disabled",
                   PROPAGATION_BOUND_S)
    admin.call("EnableKey", KeyId=keys[1])

    # --- PostgreSQL restarts under load: bounded 503s, and the nodes recover by themselves ------------------
    pids = {node.name: node.process.pid for node in survivors}
    kill_errors = list(load.errors)
    load.errors.clear()
    load.start(2)
    time.sleep(1)
    stopped_at = time.monotonic()
    postgres.stop()
    time.sleep(POSTGRES_DOWN_S)
    postgres.start()
    back_at = time.monotonic()
    wait_until(lambda: _answers(admin, keys[0]), RECOVERY_BOUND_S, "recovery after the PostgreSQL restart")
    recovered_at = time.monotonic()
    time.sleep(2)
    load.stop()
    assert {node.name: node.process.pid for node in survivors} == pids  # nobody restarted a node
    assert all(code == "ServiceUnavailableTemporary" for _, code in load.errors), load.errors
    assert all(stopped_at <= at <= recovered_at for at, _ in load.errors), \
        ("503s outside the outage", stopped_at, back_at, recovered_at, [at for at, _ in load.errors])
    assert recovered_at - back_at <= RECOVERY_BOUND_S
    assert not load.wrong

    # --- the replay cache stops: no request is let through unchecked, and service resumes when it is back ----
    redis.stop()
    with pytest.raises(ApiError) as unavailable:
        admin.call("DescribeKey", KeyId=keys[0])
    assert (unavailable.value.status, unavailable.value.code) == (503, "ServiceUnavailableTemporary")
    for node in survivors:  # straight to each node too, not only through the balancer
        with pytest.raises(ApiError) as direct:
            sdk("legacy", node.endpoint, access_key_id, secret).call("DescribeKey", KeyId=keys[0])
        assert (direct.value.status, direct.value.code) == (503, "ServiceUnavailableTemporary")
    redis.start()
    wait_until(lambda: _answers(admin, keys[0]), RECOVERY_BOUND_S, "recovery after the Redis restart")

    # --- every acknowledged blob decrypts on the survivors, and after all the nodes restarted ---------------
    blobs = list(load.blobs)
    print(f"cluster: {load.requests} requests, {len(blobs)} blobs; kill: {len(kill_errors)} failed requests; "
          f"PostgreSQL restart: {len(load.errors)} 503s, answering again {recovered_at - back_at:.2f} s after "
          f"PostgreSQL ({recovered_at - stopped_at:.2f} s after it stopped)")
    assert not decrypt_all(cluster.endpoint, access_key_id, secret, blobs)
    exits = dict(zip([node.name for node in cluster.nodes], cluster.stop(), strict=True))
    assert all(exits[node.name] == 0 for node in survivors), exits
    cluster.start()
    assert not decrypt_all(cluster.endpoint, access_key_id, secret, blobs)


def _answers(client, key_id: str) -> bool:
    try:
        client.call("DescribeKey", KeyId=key_id)
        return True
    except Exception:
        return False
