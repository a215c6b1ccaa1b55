"""A live ``hsmkms serve`` in a subprocess, with its own SoftHSM token, store and development credentials."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HSMKMS = [sys.executable, "-m", "hsmkms"]
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(root: Path, port: int, workers: int = 2, extra: str = "") -> Path:
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
[hsm]
token_label = "hsmkms-e2e"
pin_file = "data/token.pin"
[hsm.softhsm]
token_dir = "data/tokens"
{extra}
""",
        encoding="utf-8",
    )
    return config


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMKMS_") and k != "SOFTHSM2_CONF"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([*HSMKMS, *args], capture_output=True, text=True, env=env or clean_env(),
                            timeout=timeout)
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
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([*HSMKMS, "serve", "--config", str(self.config)], stdout=log,
                                        stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"server did not stop on signal {sig}:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def provision_server(root: Path, workers: int = 2, extra_config: str = "") -> LiveServer:
    """Configure and provision (``hsmkms dev-setup``) a server; the caller starts it."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(root, port, workers, extra_config)
    credentials = root / "credentials.json"
    run_cli("dev-setup", "--config", str(config), "--credentials", str(credentials))
    facts = json.loads(credentials.read_text(encoding="utf-8"))
    return LiveServer(root, config, port, facts["AccessKeyId"], facts["AccessKeySecret"], facts["KeyAlias"],
                      root / "server.log")
