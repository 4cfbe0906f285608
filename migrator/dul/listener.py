"""A TCP listener for acceptors: one accept thread, one thread per connection.

The accept thread only accepts (and asks ``screen`` whether to keep the connection): the
TLS handshake and everything after it run in the connection's own thread, so one client
that connects and never speaks cannot hold up the others. ``tls_accept`` is that handshake,
bounded by the connection's deadline, and ``close_after_alert`` the way to close a TLS
client we refused so that it reads why.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from migrator.dul.reader import HandshakeExpired

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("migrator.dul")

#: How often the accept loop looks at its stop flag if nothing woke it (``stop`` does).
_POLL = 0.25
#: How long a refused TLS client gets to read our alert and close first.
ALERT_LINGER = 2.0


class Listener:
    """Listens on (bind, port); ``handle(sock, address, token)`` runs in a thread per
    connection, ``token`` being what ``screen(sock, address)`` returned in the accept thread
    (None: the connection is closed at once)."""

    def __init__(
        self,
        bind: str,
        port: int,
        handle: Callable[[socket.socket, tuple[str, int], Any], None],
        screen: Callable[[socket.socket, tuple[str, int]], Any] = lambda s, a: True,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: a socket already listening (shared by several processes) instead of
        binding (bind, port)."""
        self._handle = handle
        self._screen = screen
        if sock is None:
            sock = socket.create_server((bind, port), backlog=128, reuse_port=False)
        self._sock = sock
        self._sock.settimeout(_POLL)
        # ``stop`` writes here to end the accept loop at once: a C-MOVE's receiver stops
        # after every move, and waiting for the next poll cost each move ~0.25 s.
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="dul-accept", daemon=True)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting (connections being served go on: end them, then ``join``)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.ident is not None:  # started
            self._thread.join(2 * _POLL + 1)
        for sock in (self._sock, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                ready = selector.select(_POLL)
                if self._stop.is_set():
                    return
                if any(key.fileobj is self._sock for key, _ in ready):
                    self._accept_one()

    def _accept_one(self) -> None:
        try:
            client, address = self._sock.accept()
        except TimeoutError:
            return  # taken by nobody else, but gone (a client that reset at once)
        except OSError as exc:
            if self._stop.is_set():
                return
            log.warning("accept failed: %s", exc.strerror or exc)
            time.sleep(0.05)  # EMFILE and the like: do not spin
            return
        token = self._screen(client, address)
        if token is None:
            with contextlib.suppress(OSError):
                client.close()
            return
        thread = threading.Thread(
            target=self._run, args=(client, address, token), name="dul-association", daemon=True
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _run(self, client: socket.socket, address: tuple[str, int], token: Any) -> None:
        try:
            self._handle(client, address, token)
        except Exception:  # a bug of ours: the traceback is wanted, the server goes on
            log.exception("connection from %s:%s: handler failed", address[0], address[1])
            with contextlib.suppress(OSError):
                client.close()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())


class TlsFailed(Exception):
    """The TLS handshake failed: ``sock`` is the TLS socket to close (``close_after_alert``
    when ``client_speaks_tls(cause)``), ``cause`` the SSL or OS error."""

    def __init__(self, sock: ssl.SSLSocket, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.sock = sock
        self.cause = cause


def tls_accept(sock: socket.socket, context: ssl.SSLContext, deadline: float) -> ssl.SSLSocket:
    """The server side of the TLS handshake, over by ``deadline``.

    Raises HandshakeExpired (the connection is closed) or TlsFailed.
    """
    left = deadline - time.monotonic()
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        if left <= 0:
            raise TimeoutError()
        tls.settimeout(left)
        tls.do_handshake()
    except TimeoutError:
        with contextlib.suppress(OSError):
            tls.close()
        raise HandshakeExpired() from None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TlsFailed(tls, exc) from None
    return tls


def client_speaks_tls(exc: BaseException) -> bool:
    """False when the handshake failed because the client sent no TLS at all."""
    reason = str(getattr(exc, "reason", "") or "").upper()
    return reason not in {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"}


def close_after_alert(request: Any) -> None:
    """Close a connection whose TLS handshake failed so that the client reads why.

    OpenSSL has sent the alert (certificate required, unknown CA...). With TLS 1.3 the
    client believes the handshake done and has already sent its A-ASSOCIATE-RQ: closing
    with those bytes unread would send a TCP reset, which can destroy the alert before
    the client reads it (it then only sees a connection reset). So read and drop what it
    sends until it closes, for ``ALERT_LINGER`` seconds at most, then close.
    """
    try:
        raw = socket.socket(fileno=request.detach())
    except OSError:
        return
    with raw:
        deadline = time.monotonic() + ALERT_LINGER
        with contextlib.suppress(OSError):
            while (left := deadline - time.monotonic()) > 0:
                raw.settimeout(left)
                if not raw.recv(65536):
                    break
