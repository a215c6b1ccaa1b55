"""A live server on 127.0.0.1 inside the test process, with an injected clock.

The key lifecycle runs on days-long windows (deletion, rotation); here the test moves the clock the services
see, while requests are still signed and checked against the wall clock.  The server shares the session's
SoftHSM token, so a test can look at the token's objects directly.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from werkzeug.serving import make_server

from hsmkms.app import Runtime, build_runtime, create_app
from hsmkms.hsm.backend import HsmBackend
from hsmkms.settings import Settings


class FakeClock:
    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class InProcessServer:
    runtime: Runtime
    clock: FakeClock
    port: int
    access_key_id: str
    access_key_secret: str
    alias: str = "alias/dev"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


class _ErrorCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def start_in_process(base: Settings, hsm: HsmBackend, data_dir: Path, expect_errors: bool = False):
    """Start a threaded server; returns (server, stop function).

    At stop, no request may have failed with a 5xx -- or, with ``expect_errors`` (a test that injects faults),
    none may have failed with anything but a logged 503 (an error line without a traceback).
    """
    settings = dataclasses.replace(base, data_dir=data_dir, softhsm_token_dir=None, account_id="1234567890123456")
    clock = FakeClock()
    runtime = build_runtime(settings, hsm=hsm, clock=clock)
    runtime.store.migrate()
    runtime.services.access_keys.ensure_service_key()
    access_key_id, secret = runtime.services.access_keys.create("in-process tests")
    app = create_app(settings, runtime=runtime)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, name="in-process-server", daemon=True)
    thread.start()
    failures = _ErrorCollector()
    logging.getLogger("hsmkms").addHandler(failures)

    def stop() -> None:
        http.shutdown()
        thread.join(10)
        logging.getLogger("hsmkms").removeHandler(failures)
        app.close()
        runtime.store.close()
        runtime.nonces.close()
        # Every 5xx is logged at ERROR: none may have happened (with injected faults: only 503s, no traceback).
        unexpected = [r for r in failures.records if r.exc_info or not expect_errors]
        assert not unexpected, [r.getMessage() for r in unexpected]

    return InProcessServer(runtime, clock, http.server_port, access_key_id, secret), stop
