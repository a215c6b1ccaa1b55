"""A live ``hsmkms serve`` in a subprocess, with its own token (SoftHSM or NSS softoken), store and development
credentials."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.tokens import hsm_config

HSMKMS = [sys.executable, "-m", "hsmkms"]
FAILURE_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(root: Path, port: int, workers: int = 2, extra: str = "", pin: str | None = None,
                 token: str = "softhsm", token_label: str = "hsmkms-e2e", token_dir: str = "data/tokens") -> Path:
    """A deployment under ``root``: data in ``root/data``, a token of its own (see tests/tokens.py), listening
    on ``port``.  ``pin``: the PIN comes from HSMKMS_HSM_PIN instead of a PIN file."""
    config = root / "hsmkms.toml"
    config.write_text(
        f"""
data_dir = "data"
[server]
listen = "127.0.0.1:{port}"
workers = {workers}
[kms]
region = "cn-hangzhou"
account_id = "1234567890123456"
{hsm_config(token, root / "data", token_label, pin, token_dir)}
{extra}
""",
        encoding="utf-8",
    )
    return config


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMKMS_") and k != "SOFTHSM2_CONF"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 60,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*HSMKMS, *args], capture_output=True, text=True, env=clean_env() | (env or {}),
                            timeout=timeout, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"hsmkms {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class LiveServer:
    root: Path
    config: Path
    port: int
    access_key_id: str
    access_key_secret: str
    alias: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)  # extra environment (a PIN, TLS files)
    ca: Path | None = None  # set when serving HTTPS
    ops_url: str | None = None  # the [metrics] listener, when there is one
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.endpoint}"

    def cli(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, "--config", str(self.config), env=self.env, check=check, stdin=stdin)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([*HSMKMS, "serve", "--config", str(self.config)], stdout=log,
                                        stderr=subprocess.STDOUT, env=clean_env() | self.env,
                                        start_new_session=True)
        context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen((self.ops_url or self.url) + "/readyz", timeout=2,
                                            context=context) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        if sig == signal.SIGKILL:  # a crash: every process at once
            os.killpg(self.process.pid, sig)
        else:
            # As systemd's KillMode=mixed: the master stops its workers.  Signalled too, a worker may exit
            # before the master has asked it to, which granian reports as an unexpected exit (status 1).
            os.kill(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"server did not stop on signal {sig}:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def error_lines(self) -> list[str]:
        """Lines of the server log that report an error: every 5xx is logged at ERROR (or with a traceback)."""
        return [line for line in self.log().splitlines() if FAILURE_LINE.search(line)]


def provision_server(root: Path, workers: int = 2, extra_config: str = "", pin: str | None = None,
                     tls: bool = False, ops_port: int | None = None, token: str = "softhsm") -> LiveServer:
    """Configure and provision (``hsmkms dev-setup``) a server on a new ``token`` (tests/tokens.py); the caller
    starts it.

    ``pin``: give the token PIN through HSMKMS_HSM_PIN instead of a PIN file.  ``tls``: serve HTTPS with a
    development CA and certificate.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if ops_port is not None:
        extra_config += f'\n[metrics]\nlisten = "127.0.0.1:{ops_port}"\n'
    config = write_config(root, port, workers, extra_config, pin=pin, token=token)
    credentials = root / "credentials.json"
    env = {"HSMKMS_HSM_PIN": pin} if pin else {}
    run_cli("dev-setup", "--config", str(config), "--credentials", str(credentials), *(["--tls"] if tls else []),
            env=env)
    facts = json.loads(credentials.read_text(encoding="utf-8"))
    ca = None
    if tls:
        tls_dir = root / "data" / "tls"
        env |= {"HSMKMS_SERVER_TLS_CERTIFICATE": str(tls_dir / "server.pem"),
                "HSMKMS_SERVER_TLS_KEY": str(tls_dir / "server-key.pem")}
        ca = tls_dir / "ca.pem"
    return LiveServer(root, config, port, facts["AccessKeyId"], facts["AccessKeySecret"], facts["KeyAlias"],
                      root / "server.log", env=env, ca=ca,
                      ops_url=f"http://127.0.0.1:{ops_port}" if ops_port is not None else None)
