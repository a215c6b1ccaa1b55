"""PostgreSQL and Redis for the tests (and ``make run-cluster``).

The machine's own services are used when they answer: ``HSMKMS_TEST_POSTGRES_URL`` (default
postgresql://postgres@127.0.0.1:5432/test) and ``HSMKMS_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/0).
Where none answers, a private server is started in a temporary directory, on a free port of 127.0.0.1, from
the Debian packages (installed by scripts/install-system-deps.sh when missing and run as root).  Tests that
restart PostgreSQL always use a private one: the machine's own is never restarted.

PostgreSQL refuses to run as root: run as root, the private server runs as the ``postgres`` user (which
the Debian package creates) in a directory of its own under the system's temporary folder, since pytest's
own folders are private to root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL_ENV = "HSMKMS_TEST_POSTGRES_URL"
REDIS_URL_ENV = "HSMKMS_TEST_REDIS_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_answers(url: str) -> bool:
    """True when we can log in and create databases there."""
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            return bool(conn.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
                        .fetchone()[0])
    except psycopg.Error:
        return False


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.exceptions.RedisError:
        return False


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def with_schema(url: str, schema: str) -> str:
    """The URL with ``search_path`` set to ``schema`` (libpq's ``options`` parameter)."""
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, f"options=-csearch_path%3D{schema}"]))
    return urlunsplit(parts._replace(query=query))


def install(package: str) -> None:
    """Install a Debian package through the project's script (which needs root, and says so otherwise)."""
    subprocess.run([str(ROOT / "scripts" / "install-system-deps.sh"), package], check=True)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        install("postgresql")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    return Path(found[-1]).parent


class PrivatePostgres:
    """A PostgreSQL server of its own, on a free port of 127.0.0.1, trusting local connections."""

    def __init__(self, parent: Path | None = None, durable: bool = False):
        """``durable``: fsync on, as in production (the benchmark); off by default, since tests never crash
        the machine and the disk's flushes only slow them down."""
        self.durable = durable
        self.bin = _postgres_bin()
        self.as_root = os.geteuid() == 0
        base = None if self.as_root else parent
        self.root = Path(tempfile.mkdtemp(prefix="hsmkms-postgres-", dir=base))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._user = {}
        if self.as_root:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run([str(self.bin / program), *args], capture_output=True, text=True, cwd=self.root,
                                timeout=START_TIMEOUT_S, **self._user)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}\n{result.stderr}\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} "
                   f"-c fsync={'on' if self.durable else 'off'} -c max_connections=200 -c shared_buffers=64MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT_S),
                  "-o", options, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(START_TIMEOUT_S), "stop")

    def pid(self) -> int | None:
        """The postmaster's process id (its children are the server's other processes)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            try:
                self.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A Redis server of its own, on a free port of 127.0.0.1, keeping nothing on disk."""

    def __init__(self, parent: Path):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            install("redis-server")
            self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.root = parent
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not redis_answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private Redis did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def remove(self) -> None:
        self.stop()


def create_database(server_url: str, prefix: str = "hsmkms_test") -> str:
    """A new empty database on the server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_schema(server_url: str, prefix: str = "hsmkms_test") -> str:
    """A new empty schema in the server's database; returns the URL that uses it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return with_schema(server_url, name)


def drop_schema(server_url: str, schema_url: str) -> None:
    name = schema_url.rsplit("search_path%3D", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def ensure_database(server_url: str, name: str) -> None:
    """Create the database ``name`` on the server unless it exists."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
