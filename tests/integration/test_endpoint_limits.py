"""What the RPC endpoint keeps of a hostile request: refused early, cut before it is queued."""

from __future__ import annotations

import io

from hsmkms.app import create_app
from hsmkms.audit import MAX_FIELD_CHARS


def call(app, query: str, headers: dict[str, str] | None = None) -> tuple[str, bytes]:
    status = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": query, "wsgi.input": io.BytesIO(b""),
               "REMOTE_ADDR": "127.0.0.1", **(headers or {})}
    body = b"".join(app(environ, lambda code, _headers: status.append(code)))
    return status[0], body


def test_client_chosen_audit_fields_are_cut_before_they_are_queued(runtime, monkeypatch):
    app = create_app(runtime.settings, runtime=runtime)
    queued = []
    monkeypatch.setattr(app.audit, "record", queued.append)
    junk = "A" * 60_000
    assert call(app, f"Action={junk}&Version=2016-01-20")[0].startswith("400")  # no such action
    assert call(app, f"Action=DescribeKey&Version=2016-01-20&AccessKeyId={junk}&Signature=x")[0].startswith("400")
    assert len(queued[0].action) == MAX_FIELD_CHARS and len(queued[1].access_key_id) == MAX_FIELD_CHARS
    app.close()
