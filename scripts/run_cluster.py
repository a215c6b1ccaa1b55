"""make run-cluster: three hsmkms nodes on one machine, sharing one PostgreSQL database and one SoftHSM token,
behind HAProxy on 127.0.0.1:8080, which health-checks each node's /readyz.

Run from the repository root:  .venv/bin/python scripts/run_cluster.py [--workers N]

- Nodes: 127.0.0.1:8081, :8082 and :8083, configured under var/cluster/ (node1.toml ...; each node has a data
  folder of its own there, and they share var/cluster/softhsm/ and var/cluster/secrets/).
- Metadata: the database named by HSMKMS_STORE_URL; by default ``hsmkms_cluster`` on the local PostgreSQL
  (HSMKMS_TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test: the database is created
  there when missing).
- Nonces: in Redis, as the README recommends: HSMKMS_AUTH_NONCE_URL, by default the local Redis
  (HSMKMS_TEST_REDIS_URL, default redis://127.0.0.1:6379/0).
- Where no PostgreSQL or Redis answers, a private one is started in a temporary folder for this run (from the
  Debian packages, installed when missing).
- It writes var/dev-credentials.json (Endpoint 127.0.0.1:8080, a development access key, ``alias/dev``) as
  ``make run`` does, so every client and example works against the cluster unchanged.  A second run reuses
  the token, the database, the access key and the key.

Ctrl-C (or SIGTERM) stops HAProxy and the nodes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hsmkms.cli import DEV_BANNER  # noqa: E402
from tests import services  # noqa: E402
from tests.e2e.cluster import Cluster  # noqa: E402

CLUSTER_DIR = ROOT / "var" / "cluster"
CREDENTIALS = ROOT / "var" / "dev-credentials.json"
NODE_PORTS = [8081, 8082, 8083]
BALANCER_PORT = 8080
DATABASE = "hsmkms_cluster"


def database_url() -> tuple[str, services.PrivatePostgres | None]:
    """The cluster's database URL, and the private server started for it (None when an existing one is used)."""
    if os.environ.get("HSMKMS_STORE_URL"):
        return os.environ["HSMKMS_STORE_URL"], None
    server = os.environ.get(services.POSTGRES_URL_ENV, services.DEFAULT_POSTGRES_URL)
    private = None
    if not services.postgres_answers(server):
        print("no PostgreSQL answers at the default address: starting a private one for this run", flush=True)
        private = services.PrivatePostgres()
        private.start()
        server = private.url
    services.ensure_database(server, DATABASE)
    return services.with_database(server, DATABASE), private


def redis_url() -> tuple[str, services.PrivateRedis | None]:
    """The nonce cache's URL, and the private Redis started for it (None when an existing one is used)."""
    if os.environ.get("HSMKMS_AUTH_NONCE_URL"):
        return os.environ["HSMKMS_AUTH_NONCE_URL"], None
    url = os.environ.get(services.REDIS_URL_ENV, services.DEFAULT_REDIS_URL)
    if services.redis_answers(url):
        return url, None
    print("no Redis answers at the default address: starting a private one for this run", flush=True)
    private = services.PrivateRedis(Path(tempfile.mkdtemp(prefix="hsmkms-cluster-redis-")))
    return private.url, private


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="worker processes per node (default 1)")
    args = parser.parse_args()
    url, private = database_url()
    nonce_url, private_redis = redis_url()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster.provision(CLUSTER_DIR, url, NODE_PORTS, BALANCER_PORT, workers=args.workers,
                                extra_config=f'[auth]\nnonce_url = "{nonce_url}"\n', credentials_path=CREDENTIALS)
    try:
        cluster.start()
        facts = cluster.credentials
        print(DEV_BANNER.format(c=SimpleNamespace(endpoint=facts["Endpoint"], access_key_id=facts["AccessKeyId"],
                                                  access_key_secret=facts["AccessKeySecret"],
                                                  key_alias=facts["KeyAlias"]), file=CREDENTIALS))
        print(f"HAProxy on 127.0.0.1:{BALANCER_PORT} in front of "
              + ", ".join(node.endpoint for node in cluster.nodes)
              + f"; metadata in {url}, nonces in {nonce_url}; node logs in {CLUSTER_DIR}; Ctrl-C stops the "
                "cluster.", flush=True)
        while not stop.wait(1):
            for node in cluster.nodes:
                if node.process is not None and node.process.poll() is not None:
                    print(f"node {node.name} exited ({node.process.returncode}); see {node.log_path}", flush=True)
                    node.process = None
    finally:
        cluster.stop()
        for server in (private, private_redis):
            if server is not None:
                server.remove()


if __name__ == "__main__":
    main()
