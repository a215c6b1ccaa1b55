"""Several ``hsmkms serve`` nodes on one PostgreSQL database and one SoftHSM token, behind HAProxy.

``make run-cluster`` (scripts/run_cluster.py) and the three-node tests both use it.  Each node has a data
folder of its own (as a node on its own machine would: its audit log, metrics and heartbeats); they share
the metadata database, the replay cache (in that database unless ``nonce_url`` says otherwise), the SoftHSM
token (and the file lock that goes with it) and the token PIN.  HAProxy round-robins over the nodes that answer
``/readyz``, and answers in the Alibaba error shape (ServiceUnavailableTemporary, 503) when none does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hsmkms.api.render import error as error_reply
from hsmkms.errors import ServiceUnavailable
from tests import services
from tests.e2e.server import HSMKMS, clean_env, run_cli

TOKEN_LABEL = "hsmkms-cluster"
START_TIMEOUT_S = 60
HEALTH_CHECK_INTERVAL_MS = 500  # HAProxy takes a node out after 2 failed checks, back in after 1 good one
NO_NODE_REQUEST_ID = "00000000-0000-4000-8000-000000000000"  # the answer HAProxy gives when no node is ready

HAPROXY_CONFIG = """\
# Written by hsmkms (tests/e2e/cluster.py); regenerated at every start.
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 30s
    # A node that refuses the connection (it died) is replaced by another for the same request.
    retries 2
    option redispatch
    errorfile 502 {errors}/503.http
    errorfile 503 {errors}/503.http
    errorfile 504 {errors}/503.http

frontend kms
    bind {listen}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {interval}ms fall 2 rise 1
{servers}
"""


def haproxy_error_file() -> bytes:
    """The complete HTTP answer HAProxy sends when no node can answer: hsmkms's own 503."""
    reply = error_reply(ServiceUnavailable(), NO_NODE_REQUEST_ID, "hsmkms")
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")
    return head.encode() + reply.body


def node_config(root: Path, name: str, port: int, store_url: str, workers: int, extra: str = "") -> Path:
    config = root / f"{name}.toml"
    config.write_text(
        f"""# Node {name} of the hsmkms cluster (written by tests/e2e/cluster.py).
data_dir = "{name}"
[server]
listen = "127.0.0.1:{port}"
workers = {workers}
[hsm]
token_label = "{TOKEN_LABEL}"
pin_file = "secrets/token.pin"
lock_file = "softhsm/hsm.lock"
[hsm.softhsm]
token_dir = "softhsm/tokens"
[store]
url = "{store_url}"
{extra}
""",
        encoding="utf-8",
    )
    return config


@dataclass
class Node:
    name: str
    config: Path
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([*HSMKMS, "serve", "--config", str(self.config)], stdout=log,
                                        stderr=subprocess.STDOUT, env=clean_env() | self.env,
                                        start_new_session=True)
        log.close()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"node {self.name} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.name} did not become ready:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        try:  # a SIGKILL is a crash of every process; anything else goes to the master (see LiveServer.stop)
            os.killpg(self.process.pid, sig) if sig == signal.SIGKILL else os.kill(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"node {self.name} did not stop on signal {sig}:\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the node's master and workers at once, as a machine losing power would."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(*args, "--config", str(self.config), env=self.env, check=check)


@dataclass
class Cluster:
    root: Path
    store_url: str
    nodes: list[Node]
    lb_port: int
    credentials_path: Path
    haproxy: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.lb_port}"

    @property
    def credentials(self) -> dict:
        return json.loads(self.credentials_path.read_text(encoding="utf-8"))

    @classmethod
    def provision(cls, root: Path, store_url: str, ports: list[int], lb_port: int, workers: int = 1,
                  extra_config: str = "", credentials_path: Path | None = None) -> Cluster:
        """Configure every node, set the deployment up through the first (``hsmkms dev-setup``, which makes
        the token, the schema, a development access key and ``alias/dev``) and the others (``hsmkms init``)."""
        root.mkdir(parents=True, exist_ok=True)
        credentials_path = credentials_path or root / "credentials.json"
        nodes = []
        for number, port in enumerate(ports, start=1):
            name = f"node{number}"
            config = node_config(root, name, port, store_url, workers, extra_config)
            nodes.append(Node(name, config, port, root / f"{name}.log"))
        run_cli("dev-setup", "--config", str(nodes[0].config), "--credentials", str(credentials_path),
                "--endpoint", f"127.0.0.1:{lb_port}")
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda node: node.cli("init"), nodes[1:]))
        return cls(root, store_url, nodes, lb_port, credentials_path)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        self.start_balancer()

    def start_balancer(self) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            services.install("haproxy")
            binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        errors = self.root / "haproxy"
        errors.mkdir(exist_ok=True)
        (errors / "503.http").write_bytes(haproxy_error_file())
        servers = "\n".join(f"    server {node.name} {node.endpoint} check" for node in self.nodes)
        config = self.root / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(errors=errors, listen=self.endpoint,
                                                interval=HEALTH_CHECK_INTERVAL_MS, servers=servers))
        check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise AssertionError(f"haproxy refused {config}:\n{check.stdout}{check.stderr}")
        log = open(self.root / "haproxy.log", "ab")
        self.haproxy = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.balancer_ready():
            if self.haproxy.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("haproxy did not start:\n" + (self.root / "haproxy.log").read_text())
            time.sleep(0.1)

    def balancer_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> list[int | None]:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
        return [node.stop() for node in self.nodes]
