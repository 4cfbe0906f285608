"""An HTTP proxy in front of an S3 server (moto) that answers chosen requests with errors.

botocore's before-send hook (tests/peers/s3.py, TESTING.md §7.2) injects errors only in the
process that registers it; Celery workers are other processes. This proxy injects them on
the wire instead, for every client that is given its endpoint:

    with FaultyHttpProxy(moto.endpoint, [(503, "SlowDown"), (500, "InternalError")],
                         match=object_get) as proxy:
        ...  # --s3-endpoint proxy.endpoint
    assert proxy.injected == 2

The first requests that ``match`` get the scripted answers, one each, in order; everything
else (and every request after the script ran out) is forwarded unchanged, headers included
(moto does not check signatures, and the Host header is passed on as the client sent it).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

#: (method, path with query, request headers) -> inject an error for this request?
Matcher = Callable[[str, str, Message], bool]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


def object_get(method: str, path: str, headers: Message) -> bool:
    """A whole-object GET (what a worker does before sending): not a listing, not the
    planner's ranged header read, not a HEAD."""
    bucket_and_key = path.split("?", 1)[0].lstrip("/").split("/", 1)
    return (
        method == "GET"
        and headers.get("Range") is None
        and len(bucket_and_key) == 2
        and bool(bucket_and_key[1])
    )


def _error_body(code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        "<Message>injected by the test proxy</Message></Error>"
    ).encode()


class FaultyHttpProxy:
    def __init__(
        self, upstream: str, errors: Iterable[tuple[int, str]], *, match: Matcher = object_get
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.match = match
        self._script = list(errors)
        self._lock = threading.Lock()
        #: Errors answered so far, and every request seen: (method, path, injected status)
        self.injected = 0
        self.requests: list[tuple[str, str, int | None]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _next_error(self, method: str, path: str, headers: Message) -> tuple[int, str] | None:
        with self._lock:
            error = None
            if self.injected < len(self._script) and self.match(method, path, headers):
                error = self._script[self.injected]
                self.injected += 1
            self.requests.append((method, path, error[0] if error else None))
            return error

    def start(self) -> FaultyHttpProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: one line per request otherwise

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                error = proxy._next_error(self.command, self.path, self.headers)
                if error is not None:
                    status, code = error
                    payload = b"" if self.command == "HEAD" else _error_body(code)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for key, value in resp.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    # HEAD: the length of the object, not of the (empty) body.
                    length_header = resp.getheader("Content-Length")
                    if self.command == "HEAD" and length_header is not None:
                        self.send_header("Content-Length", length_header)
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FaultyHttpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
