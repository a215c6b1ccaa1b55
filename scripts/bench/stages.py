"""The benchmark's profiling mode: where the time of one request goes, stage by stage.

    .venv/bin/python scripts/bench/stages.py [--requests N] [--keys K] [--json PATH]

The worker's WSGI application is built in this process exactly as ``hsmkms serve`` builds it (``worker_app``'s
steps: ``create_app``, store refresh, key warm-up, HSM login; its maintenance scheduler off) on a fresh
deployment (a new SoftHSM token, ``hsmkms dev-setup``), and pre-signed requests go straight into it, no server
in between.  Each stage is timed by wrapping the function that does it, with exclusive times (a stage called
inside another is subtracted from it), so the stages add up to the request.  The wrappers cost a few
microseconds of their own: the breakdown says where the time goes; ``run.py``'s CPU per request through the
server is the figure to compare with the targets.  Nothing here touches the production server: the wrappers
exist only in this process.

``--keys K`` then creates K keys (CreateKey through the same application), restarts the application as
``run.py`` restarts the server, and names a random one in each GenerateDataKey, then decrypts a blob of a
random one in each Decrypt, the shapes of ``run.py``'s 10,000-key runs; each is followed by a run naming one
key on that same application, to compare with.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402

from hsmkms import settings as settings_module  # noqa: E402
from hsmkms.api import render, rpc  # noqa: E402
from hsmkms.api.actions import ACTIONS  # noqa: E402
from hsmkms.server import worker_app  # noqa: E402

OTHER = "endpoint (the rest)"


class StageClock:
    """Exclusive wall time per stage: entering a stage pauses the one it was called from."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self._stack: list[list] = []  # [stage, started_ns, child_ns]
        self._patched: list[tuple[object, str, object]] = []  # (owner, name, original), to restore

    def wrap(self, stage: str, function: Callable) -> Callable:
        clock = time.perf_counter_ns
        stack = self._stack
        totals = self.totals
        totals.setdefault(stage, 0)

        def timed(*args, **kwargs):
            frame = [stage, clock(), 0]
            stack.append(frame)
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = clock() - frame[1]
                stack.pop()
                totals[stage] += elapsed - frame[2]
                if stack:
                    stack[-1][2] += elapsed

        return timed

    def patch(self, owner: object, name: str, stage: str) -> None:
        """Time ``owner.name`` (a module function or an instance's method) as ``stage``."""
        original = getattr(owner, name)  # AttributeError: the request path moved; this table must follow it
        self._patched.append((owner, name, owner.__dict__.get(name) if hasattr(owner, "__dict__") else original))
        setattr(owner, name, self.wrap(stage, original))

    def restore(self) -> None:
        """Undo every patch: an instance's method falls back to its class's, a module function is put back."""
        for owner, name, own in reversed(self._patched):
            if own is None:
                delattr(owner, name)
            else:
                setattr(owner, name, own)
        self._patched.clear()


def instrument(app, clock: StageClock) -> None:
    """The stage table: one entry per step of ``RpcEndpoint`` and what it calls."""
    endpoint = app.rpc
    runtime = app.runtime
    clock.patch(rpc, "new_request_id", "request id")
    clock.patch(rpc, "read_body", "parameters and headers")
    clock.patch(rpc, "parse_pairs", "parameters and headers")
    clock.patch(rpc, "merge", "parameters and headers")
    clock.patch(rpc, "lower_headers", "parameters and headers")
    clock.patch(endpoint.watch, "refresh", "metadata freshness check")
    clock.patch(endpoint.authenticator, "authenticate", "signature (V1 HMAC)")
    clock.patch(endpoint.authenticator, "_credentials", "access key lookup")
    clock.patch(endpoint.authenticator._nonces, "claim", "nonce claim (replay check)")
    clock.patch(runtime.services.keys, "lookup", "key resolution")
    clock.patch(runtime.services.crypto, "locate", "blob decoding and key resolution")
    clock.patch(rpc, "authorize", "policy")
    for name in ("gcm_encrypt", "gcm_decrypt", "random"):
        clock.patch(runtime.services.crypto.hsm, name, "HSM (PKCS#11)")
    for action, registered in list(ACTIONS.items()):
        ACTIONS[action] = replace(registered, handler=clock.wrap("handler (apart from the HSM)", registered.handler))
    clock.patch(render, "success", "JSON rendering")
    clock.patch(endpoint.audit, "record", "audit record")
    clock.patch(endpoint.metrics, "request", "metrics")


def environ_for(line: str) -> dict:
    """A WSGI environ like granian's for one pre-signed ``GET /?query`` line."""
    _, _, target = line.partition(" ")
    _, _, query = target.partition("?")
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8080", "HTTP_USER_AGENT": "wrk", "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
    }


def call(app, line: str) -> tuple[str, bytes]:
    status: list[str] = []
    body = b"".join(app(environ_for(line), lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


def signed_lines(deployment, action: str, params_list: list[dict[str, str]]) -> list[str]:
    return bench._sign_chunk((deployment.access_key_id, deployment.secret, action, params_list))


def profile(app, deployment, action: str, params_list: list[dict[str, str]]) -> dict:
    """Run each request once, untimed stages first as warm-up, then timed; exclusive µs per request by stage."""
    lines = signed_lines(deployment, action, params_list)
    warm = len(lines) // 5
    for line in lines[:warm]:
        call(app, line)
    originals = dict(ACTIONS)
    clock = StageClock()
    instrument(app, clock)
    try:
        timed = lines[warm:]
        cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
        for line in timed:
            status, body = call(app, line)
            if not status.startswith("200"):
                raise RuntimeError(f"{action} answered {status}: {body[:300]!r}")
        wall, cpu = time.perf_counter_ns() - wall0, time.thread_time_ns() - cpu0
    finally:
        clock.restore()
        ACTIONS.update(originals)
    count = len(timed)
    stages = {stage: round(ns / count / 1000, 1) for stage, ns in clock.totals.items()}
    stages[OTHER] = round(wall / count / 1000 - sum(stages.values()), 1)
    return {"requests": count, "wall_us": round(wall / count / 1000, 1), "thread_cpu_us": round(cpu / count / 1000, 1),
            "stages_us": dict(sorted(stages.items(), key=lambda item: -item[1]))}


def build(work: Path):
    deployment = bench.Deployment.create(work / "deployment")
    return deployment, start(deployment)


def start(deployment):
    """The worker's application on ``deployment``, as a (re)started worker builds it: caches warmed.  Without
    the maintenance scheduler, whose ticks would land in the timings (and outlive the deployment here)."""
    return worker_app(settings_module.load(deployment.config, environ={"HSMKMS_SCHEDULER_INTERVAL_SECONDS": "0"}))


def create_keys(app, deployment, count: int) -> list[str]:
    key_ids = []
    for line in signed_lines(deployment, "CreateKey", [{"Description": "stages"}] * count):
        status, body = call(app, line)
        if not status.startswith("200"):
            raise RuntimeError(f"CreateKey answered {status}: {body[:300]!r}")
        key_ids.append(json.loads(body)["KeyMetadata"]["KeyId"])
    return key_ids


def breakdown(requests: int = 3000, keys: int = 0) -> dict:
    """The stage tables of GenerateDataKey and Decrypt (and GenerateDataKey over ``keys`` keys)."""
    with tempfile.TemporaryDirectory(prefix="hsmkms-stages-") as tmp:
        deployment, app = build(Path(tmp))
        try:
            gdk = bench.Bench.gdk_params
            result = {"GenerateDataKey": profile(app, deployment, "GenerateDataKey", [gdk("alias/dev")] * requests)}
            line = signed_lines(deployment, "GenerateDataKey", [gdk("alias/dev")])[0]
            blob = json.loads(call(app, line)[1])["CiphertextBlob"]
            result["Decrypt"] = profile(app, deployment, "Decrypt", [bench.Bench.decrypt_params(blob)] * requests)
            if keys:
                # As run.py does: create the keys, then restart (a worker warms its caches as it starts), so the
                # run measures serving many keys, not loading them.
                key_ids = create_keys(app, deployment, keys)
                close(app)
                app = start(deployment)
                rng = random.Random(7)
                result[f"GenerateDataKey, {keys} keys"] = profile(
                    app, deployment, "GenerateDataKey", [gdk(rng.choice(key_ids)) for _ in range(requests)])
                result[f"GenerateDataKey, 1 of {keys} keys"] = profile(
                    app, deployment, "GenerateDataKey", [gdk("alias/dev")] * requests)
                # A blob of every key, and 32 of the one key, as run.py's Decrypt runs over many keys name them.
                blobs = [json.loads(call(app, line)[1])["CiphertextBlob"]
                         for line in signed_lines(deployment, "GenerateDataKey", [gdk(key) for key in key_ids])]
                one_key = [json.loads(call(app, line)[1])["CiphertextBlob"]
                           for line in signed_lines(deployment, "GenerateDataKey", [gdk("alias/dev")] * 32)]
                decrypt = bench.Bench.decrypt_params
                result[f"Decrypt, {keys} keys"] = profile(
                    app, deployment, "Decrypt", [decrypt(rng.choice(blobs)) for _ in range(requests)])
                result[f"Decrypt, 1 of {keys} keys"] = profile(
                    app, deployment, "Decrypt", [decrypt(one_key[i % len(one_key)]) for i in range(requests)])
            return result
        finally:
            close(app)


def close(app) -> None:
    app.close()
    app.runtime.close()


def table(result: dict) -> str:
    rows = []
    for name, run in result.items():
        rows.append(f"{name}: {run['wall_us']} us a request in process ({run['thread_cpu_us']} us thread CPU, "
                    f"{run['requests']} requests)")
        rows += [f"  {us:7.1f}  {stage}" for stage, us in run["stages_us"].items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--keys", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = breakdown(args.requests, args.keys)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
