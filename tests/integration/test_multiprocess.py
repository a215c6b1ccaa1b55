"""Several processes on one SoftHSM token, as the server's workers and the CLI use it.

SoftHSM 2.6.1 does not always notice an object another process created: a process that has written the
token itself folds the other's change into its own and never re-reads the token.  The backend looks a
missing object up again after a fresh C_Initialize, so a key made by one worker is usable by every other.
A login rewrites SoftHSM's token file, so processes starting at once must not log in at the same moment.
"""

from __future__ import annotations

import multiprocessing
import uuid

from tests import tokens


def label(object_id: str) -> str:
    return f"hsmkms:cmk:{uuid.uuid4()}:{object_id}"


def serve_commands(settings, lock_path, conn) -> None:
    """A worker: makes keys, and reports whether it can use a key by id."""
    backend = tokens.backend(settings, lock_path=lock_path)
    backend.open()
    while (command := conn.recv()) != "quit":
        if command == "create":
            object_id = str(uuid.uuid4())
            backend.create_aes_key(object_id, label(object_id))
            conn.send(object_id)
        else:
            iv = backend.random(12)
            try:
                sealed = backend.gcm_encrypt(command, iv, b"probe", b"")
                conn.send(backend.gcm_decrypt(command, iv, sealed, b"") == b"probe")
            except Exception as exc:  # reported to the test, which fails on it
                conn.send(repr(exc))
    backend.close()


def start_workers(count: int, target, *args) -> tuple[list, list]:
    """``count`` forked processes running ``target(*args, conn)``; returns their pipe ends and processes."""
    context = multiprocessing.get_context("fork")
    pipes, workers = [], []
    for _ in range(count):
        parent_end, child_end = context.Pipe()
        worker = context.Process(target=target, args=(*args, child_end))
        worker.start()
        pipes.append(parent_end)
        workers.append(worker)
    return pipes, workers


def test_a_key_made_by_one_process_is_usable_by_another_that_writes_too(hsm_settings, hsm, tmp_path):
    pipes, workers = start_workers(2, serve_commands, hsm_settings, tmp_path / "hsm.lock")
    a, b = pipes

    def ask(conn, message):
        conn.send(message)
        assert conn.poll(60), "a worker did not answer"
        return conn.recv()

    try:
        results = []
        for _ in range(10):
            made_by_a = ask(a, "create")
            ask(b, "create")  # B writes the token too after A did
            results.append(ask(b, made_by_a))
            results.append(ask(a, made_by_a))
        assert results == [True] * 20
    finally:
        for conn in pipes:
            conn.send("quit")
        for worker in workers:
            worker.join(30)
    assert [worker.exitcode for worker in workers] == [0, 0]


def log_in_and_out(settings, lock_path, rounds: int, conn) -> None:
    """A worker starting again and again: each start logs in, and SoftHSM rewrites its token file then."""
    failures = []
    for _ in range(rounds):
        backend = tokens.backend(settings, lock_path=lock_path)
        try:
            backend.open()
            backend.random(16)
        except Exception as exc:  # reported to the test, which fails on it
            failures.append(repr(exc))
        finally:
            backend.close()
    conn.send(failures)


def test_processes_logging_in_at_once_all_succeed(hsm_settings, hsm, tmp_path):
    pipes, workers = start_workers(4, log_in_and_out, hsm_settings, tmp_path / "hsm.lock", 25)
    try:
        failures = [failure for conn in pipes if conn.poll(120) for failure in conn.recv()]
    finally:
        for worker in workers:
            worker.join(30)
    assert failures == []
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
