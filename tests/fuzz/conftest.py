"""Hostile-input fuzzing against one live server: hypothesis profiles, the server, the signer, the fixture keys.

Profiles: ``ci`` (the default, part of ``make test``) is small and derandomized, so CI runs the same examples
every time and the whole directory stays well under a minute; ``long`` (``HSMKMS_FUZZ=long``, what
``make fuzz`` is for) runs thousands of random examples per test and keeps failures in ``.hypothesis/``.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

from tests.e2e.server import FAILURE_LINE, LiveServer, provision_server
from tests.fuzz.wire import SERVER_ANSWERS, Signer
from tests.fuzz.world import World

_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
          HealthCheck.large_base_example, HealthCheck.filter_too_much]

PROFILE = "long" if os.environ.get("HSMKMS_FUZZ", "").lower() == "long" else "ci"
# HSMKMS_FUZZ_EXAMPLES=N overrides the number of examples per test of either profile.
_EXAMPLES = int(os.environ.get("HSMKMS_FUZZ_EXAMPLES") or 0) or None

settings.register_profile(
    "ci", max_examples=_EXAMPLES or 25, deadline=None, derandomize=True, database=None,
    suppress_health_check=_QUIET, print_blob=False,
)
settings.register_profile(
    "long", max_examples=_EXAMPLES or 5000, deadline=None, derandomize=False, suppress_health_check=_QUIET,
    print_blob=True,
)
settings.load_profile(PROFILE)

_LOG_LINE = re.compile(r"(\d{4}-\d{2}-\d{2} |\[\d{4}-)")


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory) -> LiveServer:
    live = provision_server(tmp_path_factory.mktemp("fuzz"), workers=2)
    live.start()
    yield live
    assert live.stop() == 0, live.log()
    failures = logged_failures(live.log())
    kinds = Counter(line.partition("  ->  ")[2] or line for line in failures)
    assert not failures, f"the server logged {len(failures)} errors (5xx answers), by kind:\n" + "\n".join(
        f"{count:5d} x {kind}" for kind, count in kinds.most_common()) + "\nfirst ones:\n" + "\n".join(failures[:10])


def logged_failures(log: str) -> list[str]:
    """Each ERROR (or Traceback) in the server log, with the exception its traceback ends in."""
    failures: list[str] = []
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if not FAILURE_LINE.search(line) or line.startswith("Traceback"):
            continue
        block = [line]
        for following in lines[index + 1:]:
            if _LOG_LINE.match(following):
                break
            block.append(following)
        exception = next((b for b in reversed(block) if b and not b.startswith(" ")), "")
        failures.append(f"{line}  ->  {exception}" if exception != line else line)
    return failures


@pytest.fixture(scope="session")
def signer(fuzz_server: LiveServer) -> Signer:
    return Signer(fuzz_server.port, fuzz_server.access_key_id, fuzz_server.access_key_secret)


@pytest.fixture(scope="session")
def world(signer: Signer) -> World:
    return World.build(signer)


def pytest_report_header(config) -> str:
    return f"hsmkms fuzz profile: {PROFILE} (HSMKMS_FUZZ=long for the long run)"


def pytest_terminal_summary(terminalreporter) -> None:
    """What the HTTP server (granian) itself answered (before the application saw the request), for the record."""
    if not SERVER_ANSWERS:
        return
    terminalreporter.section("answers from the HTTP server itself (not the application)")
    for (status, content_type, reason), count in sorted(SERVER_ANSWERS.items()):
        terminalreporter.line(f"{count:6d} x {status} {content_type}: {reason}")
