"""Concurrent GenerateDataKey/Decrypt/Encrypt against one server: every answer checked.

SoftHSM crashes when two threads call it at once; the server serialises PKCS#11 calls per process and
runs several worker processes, so this load must pass without a single error or wrong result.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.conftest import make_sdk

THREADS = 12
ROUNDS = 25


def worker(server, index: int) -> int:
    client = make_sdk(["tea-v3", "tea-v2", "legacy"][index % 3], server)
    context = {"thread": str(index)}
    checked = 0
    for round_number in range(ROUNDS):
        data_key = client.call("GenerateDataKey", KeyId=server.alias, EncryptionContext=context,
                               NumberOfBytes=16 + round_number)
        assert len(base64.b64decode(data_key["Plaintext"])) == 16 + round_number
        opened = client.call("Decrypt", CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext=context)
        assert opened["Plaintext"] == data_key["Plaintext"]
        message = base64.b64encode(f"{index}:{round_number}".encode()).decode()
        sealed = client.call("Encrypt", KeyId=server.alias, Plaintext=message, EncryptionContext=context)
        assert client.call("Decrypt", CiphertextBlob=sealed["CiphertextBlob"],
                           EncryptionContext=context)["Plaintext"] == message
        checked += 2
    return checked


def test_parallel_data_keys_and_decrypts(server):
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda i: worker(server, i), range(THREADS)))
    assert results == [2 * ROUNDS] * THREADS
