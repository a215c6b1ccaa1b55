"""The serving-stack ceiling: a bare Flask app answering a fixed small JSON body, as a WSGI ``app``.

It is served with exactly the server, options, front and scheduling policy hsmkms uses (see ``run.py``), so
that the ratio hsmkms / bare says how much of the time the service itself takes.  It accepts the same
requests as the RPC endpoint (``GET /`` or ``POST /`` with any query string or form body) and ignores their
parameters.

Run it directly to serve it the way ``hsmkms serve --config CONFIG`` would serve hsmkms (same server, same
options: ``hsmkms.server.server_options``, behind ``hsmkms.server.front``, the scheduling policy
through ``hsmkms.server.apply_scheduling``), on another port:

    .venv/bin/python scripts/bench/bare_app.py --config CONFIG --port PORT [--describe]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flask import Flask, Response

BODY = '{"KeyId":"00000000-0000-0000-0000-000000000000","RequestId":"00000000-0000-0000-0000-000000000000"}'
JSON_TYPE = "application/json;charset=utf-8"

app = Flask("bare")


@app.route("/", methods=["GET", "POST"])
def index() -> Response:
    return Response(BODY, content_type=JSON_TYPE)


@app.get("/healthz")
def healthz() -> Response:
    return Response('{"status":"ok"}', content_type=JSON_TYPE)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the hsmkms configuration the benchmark serves")
    parser.add_argument("--port", type=int, required=True, help="where to serve the bare app (127.0.0.1)")
    parser.add_argument("--describe", action="store_true", help="print the server and options as JSON, do not serve")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from granian import Granian

    from hsmkms.server import apply_scheduling, front, server_options
    from hsmkms.settings import load

    settings = load(args.config, environ={"HSMKMS_SERVER_LISTEN": f"127.0.0.1:{args.port}"})
    options = server_options(settings)
    if args.describe:
        print(json.dumps({"kind": "granian", "source": "hsmkms.server.server_options(settings)",
                          "options": {k: str(v) for k, v in options.items()}, "scheduling": settings.scheduling}))
        return
    apply_scheduling(settings)
    Granian("bare_app:app", **options).serve(target_loader=lambda _target: front(settings, app))


if __name__ == "__main__":
    main(sys.argv[1:])
