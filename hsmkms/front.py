"""What each worker serves: granian's RSGI interface, reading a request's body whole and under a deadline
on the event loop, then calling the WSGI application with it.

Under granian's WSGI interface the application is called on a blocking thread as soon as the headers are in,
and ``wsgi.input.read`` then waits for the client without a deadline.  A worker has one such thread (its
PKCS#11 calls are serialised anyway), so a client that sent half a body and stopped held a whole worker, and
two of them stopped the service; more threads only raise the number of connections that takes.  Here a
body still on its way costs a coroutine, not a thread: the application runs once the body is complete, and
a body not complete within ``[server] body_timeout_seconds`` (the whole body, however slowly it trickles)
is not waited for: the application answers it ``RequestTimeout`` (408) and the connection is closed.

The application runs synchronously on the event loop's thread, as it ran on the one blocking thread.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable

from granian.rsgi import HTTPProtocol, Scope

_BASE_ENVIRON = {
    "SCRIPT_NAME": "",
    "wsgi.version": (1, 0),
    "wsgi.errors": sys.stderr,
    "wsgi.input_terminated": True,
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}
_CLOSE = ("Connection", "close")


class BodyTimeout(TimeoutError):
    """Raised by ``wsgi.input.read`` when the body did not arrive within the deadline."""


class _Unreadable(io.RawIOBase):
    """``wsgi.input`` of a body that did not arrive: reading it raises ``error``."""

    def __init__(self, error: Exception):
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise self.error


class _StartResponse:
    __slots__ = ("status", "headers")

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info=None) -> None:
        self.status = int(status[:3])
        self.headers = headers


class WsgiFront:
    """An RSGI application serving the WSGI ``app``; bodies over ``max_body_bytes`` are not read (the
    application refuses them by their Content-Length) or read only up to one byte over (chunked)."""

    def __init__(self, app: Callable, max_body_bytes: int, body_timeout_seconds: float,
                 on_serving: Callable[[], None] | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds
        self.on_serving = on_serving

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called by granian in the worker once its event loop and its signal handlers are set."""
        if self.on_serving is not None:
            self.on_serving()

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        environ = wsgi_environ(scope)
        close = False
        if "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
            try:
                body = await self._read_body(environ, protocol)
            except TimeoutError:
                environ["wsgi.input"], close = _Unreadable(BodyTimeout()), True
            except Exception as exc:  # the client went away mid-body, or broke the chunked framing
                environ["wsgi.input"], close = _Unreadable(ConnectionError(type(exc).__name__)), True
            else:
                environ["wsgi.input"] = io.BytesIO(body)
        else:
            environ["wsgi.input"] = io.BytesIO()
        start = _StartResponse()
        chunks = self.app(environ, start)
        try:
            payload = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        protocol.response_bytes(start.status, [*start.headers, _CLOSE] if close else start.headers, payload)

    async def _read_body(self, environ: dict, protocol: HTTPProtocol) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_seconds  # for the whole body, not for each read
        if "HTTP_TRANSFER_ENCODING" not in environ:  # framed by Content-Length, which the HTTP server enforces
            if not 0 < int(environ["CONTENT_LENGTH"]) <= self.max_body_bytes:
                return b""  # nothing to read, or the application refuses it by its length
            return await _before(loop, deadline, protocol())
        received, size, stream = [], 0, protocol.__aiter__()
        while chunk := await _before(loop, deadline, stream.__anext__()):
            received.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                break
        return b"".join(received)


async def _before(loop: asyncio.AbstractEventLoop, deadline: float, pending):
    """Await ``pending`` (one of granian's futures), cancelled at ``deadline`` with TimeoutError.
    Lighter than asyncio.timeout, which would cost more than the rest of this module per request."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        pending.cancel()

    timer = loop.call_at(deadline, expire)
    try:
        return await pending
    except asyncio.CancelledError:
        if not expired:  # cancelled from outside (the worker stopping): not ours to turn into an answer
            raise
        raise TimeoutError from None
    finally:
        timer.cancel()


def wsgi_environ(scope: Scope) -> dict:
    """The WSGI environ (PEP 3333) of a request, as granian's WSGI interface made it, less the process
    environment it copied into every request."""
    path = scope.path
    server_host, _, server_port = scope.server.rpartition(":")
    environ = {
        **_BASE_ENVIRON,
        "REQUEST_METHOD": scope.method,
        # WSGI strings carry bytes as latin-1; granian gives the path decoded as UTF-8.
        "PATH_INFO": path if path.isascii() else path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "SERVER_PROTOCOL": "HTTP/" + scope.http_version,
        "SERVER_NAME": server_host.strip("[]"),
        "SERVER_PORT": server_port,
        "REMOTE_ADDR": scope.client.rpartition(":")[0].strip("[]"),
        "wsgi.url_scheme": scope.scheme,
    }
    # granian passes on no header value that is not visible ASCII (such a header is left out).
    for name, value in scope.headers.items():
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        if key in environ:  # a repeated header: its values joined (RFC 9110 5.3), cookies by "; "
            value = environ[key] + ("; " if name == "cookie" else ",") + value
        environ[key] = value
    if "HTTP_HOST" not in environ:
        environ["HTTP_HOST"] = scope.authority or ""
    return environ
