"""An HTTP/1.1 relay in front of a DICOMweb server that breaks chosen STOW-RS requests.

    with StowFaultRelay(orthanc.url, ["503", "reset-mid-request", "reset-after-store"]) as relay:
        ...  # --dicomweb relay.url + "/dicom-web"

The first POSTs get the scripted faults, one each, in order; every other request is
forwarded unchanged (keep-alive towards the client, one upstream connection per request):

* ``"503"``: answered ``503 Service Unavailable`` with ``Retry-After: <retry_after>``,
  not forwarded;
* ``"413"``: answered ``413 Payload Too Large`` when the request carries several files;
* ``"reset-mid-request"``: half the body read, then the connection reset (RST);
* ``"reset-after-store"``: the whole request forwarded (the server stores the instances),
  then the client's connection reset before it hears the answer.

``requests`` records every POST: when it came, its fault, and its body (tests look for SOP
Instance UIDs in it to tell which files a request carried); ``gets()`` the path and query of
every GET (QIDO-RS), in order.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Seen:
    at: float
    fault: str | None
    body: bytes
    authorization: str | None = None

    def carries(self, sop_uid: str) -> bool:
        return sop_uid.encode() in self.body

    @property
    def parts(self) -> int:
        return self.body.count(b"Content-Type: application/dicom\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the resets are on purpose


class StowFaultRelay:
    def __init__(
        self,
        upstream: str,
        faults: Iterable[str],
        *,
        retry_after: int = 2,
        tls: ssl.SSLContext | None = None,
        wado_faults: Iterable[str] = (),
    ) -> None:
        """``tls``: a server context; the relay then speaks https to its clients (a client
        the context refuses, e.g. without a certificate, never gets a request through).
        ``wado_faults``: the first WADO-RS instance GETs get these, one each, in order:
        ``"503"`` (with Retry-After), ``"cut"`` (the answer's headers and half its body, then
        a reset)."""
        parts = urlsplit(upstream)
        self._wado_script = list(wado_faults)
        self.tls = tls
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self.retry_after = retry_after
        self._script = list(faults)
        self._lock = threading.Lock()
        self.requests: list[Seen] = []
        self._gets: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"

    def posts(self) -> list[Seen]:
        with self._lock:
            return list(self.requests)

    def gets(self) -> list[str]:
        with self._lock:
            return list(self._gets)

    def _next_fault(self, body_parts: int) -> str | None:
        with self._lock:
            if not self._script:
                return None
            if self._script[0] == "413" and body_parts < 2:
                return None
            return self._script.pop(0)

    def start(self) -> StowFaultRelay:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST, as a crashed proxy or server would.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                peek = self.rfile.read(length // 2)
                fault = relay._next_fault(peek.count(b"Content-Type: application/dicom\r\n") + 1)
                if fault == "reset-mid-request":
                    with relay._lock:
                        relay.requests.append(
                            Seen(time.monotonic(), fault, peek, self.headers["Authorization"])
                        )
                    self._reset()
                    return
                body = peek + self.rfile.read(length - len(peek))
                with relay._lock:
                    relay.requests.append(
                        Seen(time.monotonic(), fault, body, self.headers["Authorization"])
                    )
                if fault == "503":
                    self._answer(503, {"Retry-After": str(relay.retry_after)}, b"busy")
                    return
                if fault == "413":
                    self._answer(413, {}, b"too large")
                    return
                status, headers, data = self._forward(body)
                if fault == "reset-after-store":
                    self._reset()
                    return
                self._answer(status, headers, data)

            def do_GET(self) -> None:
                with relay._lock:
                    relay._gets.append(self.path)
                    wado = "/instances/" in self.path
                    fault = relay._wado_script.pop(0) if wado and relay._wado_script else None
                if fault == "503":
                    self._answer(503, {"Retry-After": "1"}, b"busy")
                    return
                status, headers, data = self._forward(None)
                if fault == "cut":
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._reset()
                    return
                self._answer(status, headers, data)

            def _forward(self, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
                conn = http.client.HTTPConnection(*relay.upstream, timeout=60)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = {
                        k: v
                        for k, v in resp.getheaders()
                        if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
                    }
                    return resp.status, out, data
                finally:
                    conn.close()

        self._server = _Server(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            # Handshakes happen in accept(); a refused one is an OSError the server drops.
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
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

    def __enter__(self) -> StowFaultRelay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
