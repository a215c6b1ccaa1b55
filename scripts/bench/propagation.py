"""How fast a metadata change made on one node reaches another, with PostgreSQL: the figures behind the
choice of LISTEN/NOTIFY (with the polled change counter as the backstop) in hsmkms/store/postgres.py.

Run from the repository root:  .venv/bin/python scripts/bench/propagation.py [--writes 300]

Two store objects on one new database stand for two nodes.  Node A commits a write (an access key's state,
alternately Enabled and Disabled); the script measures how long until node B's ``change_counter()`` (what
every request reads: the listener's count) moves, and, for comparison, what one ``data_version()`` poll (a
round trip to read the counter row) costs.  With polling alone a change is seen after half the polling period
on average, and after a whole one at worst.  Uses HSMKMS_TEST_POSTGRES_URL or the local PostgreSQL, else a
private one (tests/services.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hsmkms.store.base import AccessKeyRecord  # noqa: E402
from hsmkms.store.postgres import PostgresStore  # noqa: E402
from tests import services  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(url: str, writes: int) -> dict:
    node_a, node_b = PostgresStore(url), PostgresStore(url)
    node_a.migrate()
    node_a.create_access_key(AccessKeyRecord("LTAIpropagation", b"i", b"s", "Enabled", "", 1, None))
    node_b.change_counter()
    while node_b.change_counter() != node_b.change_counter():  # until B listens
        time.sleep(0.01)
    seen, commits = [], []
    for i in range(writes):
        before = node_b.change_counter()
        started = time.perf_counter()
        node_a.set_access_key_state("LTAIpropagation", "Disabled" if i % 2 == 0 else "Enabled")
        committed = time.perf_counter()
        while node_b.change_counter() == before:
            if time.perf_counter() - started > 5:
                raise RuntimeError("a change was not heard within 5 s")
            time.sleep(0.0002)
        seen.append(time.perf_counter() - started)
        commits.append(committed - started)
    polls = []
    for _ in range(writes):
        started = time.perf_counter()
        node_b.data_version()
        polls.append(time.perf_counter() - started)
    node_a.close()
    node_b.close()
    ms = lambda values, q: round(percentile(values, q) * 1000, 2)  # noqa: E731
    return {
        "writes": writes,
        "notify_seen_ms": {"p50": ms(seen, 0.5), "p99": ms(seen, 0.99), "max": round(max(seen) * 1000, 2)},
        "write_commit_ms": {"p50": ms(commits, 0.5), "p99": ms(commits, 0.99)},
        "poll_round_trip_ms": {"p50": ms(polls, 0.5), "p99": ms(polls, 0.99),
                               "mean": round(statistics.fmean(polls) * 1000, 3)},
        "poll_only_seen_ms": {"mean": 500.0, "max": 1000.0, "note": "polling once a second"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300)
    args = parser.parse_args()
    server = os.environ.get(services.POSTGRES_URL_ENV, services.DEFAULT_POSTGRES_URL)
    private = None
    if not services.postgres_answers(server):
        private = services.PrivatePostgres()
        private.start()
        server = private.url
    url = services.create_database(server, "hsmkms_propagation")
    try:
        print(json.dumps(measure(url, args.writes), indent=2))
    finally:
        services.drop_database(server, url)
        if private is not None:
            private.remove()


if __name__ == "__main__":
    main()
