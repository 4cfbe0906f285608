"""Association-level guards of `migrator scp` against peers that hold its slots.

pynetdicom counts every accepted TCP connection as an association from the moment it is
accepted, gives it the ACSE timeout (30 s) to send its A-ASSOCIATE-RQ, and trusts the peer
to go on from there: ten silent connections locked every sender out for 30 s, and ten idle
associations for 60 s. Here (``ConnectionGuard``):

* a connection that has not sent a complete A-ASSOCIATE-RQ (TLS handshake included) within
  ``handshake_timeout`` of its accept is shut down by a watchdog thread, wherever it stalls
  (silent, or trickling bytes: a per-read timeout alone would let one byte every few seconds
  go on for ever);
* such a *pending* connection takes no association slot: ``--max-conns`` counts the
  connections that have asked for an association, and is enforced here, when the request
  arrives (pynetdicom's own count would include the pending ones);
* one address may hold at most ``per_address`` of those slots, and at most
  ``pending_per_address`` pending connections (more are closed at accept);
* the idle timeout of established associations is pynetdicom's network timeout, set by the
  server (``ScpConfig.idle_timeout``).

``PeerErrorFilter`` turns pynetdicom's ERROR records about a broken peer (a PDU it could not
decode, a connection closed mid-PDU...), which come with a traceback, into one WARNING line
that names the peer.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import socket
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

log = logging.getLogger("migrator.scp")

#: pynetdicom's loggers whose ERROR records about a peer are rewritten by PeerErrorFilter.
PYNETDICOM_PEER_LOGGERS = (
    "pynetdicom.dul",
    "pynetdicom.dimse",
    "pynetdicom.association",
    "pynetdicom.events",
    "pynetdicom.fsm",
    "pynetdicom.utils",
)


def default_per_address(max_conns: int) -> int:
    """``--max-conns-per-address`` when not given: all but a fifth of ``--max-conns``
    (8 of 10; 1, 2, 3 and 4 stay whole), so that one address cannot take every slot."""
    return max(1, max_conns - max_conns // 5)


def pending_per_address(max_conns: int) -> int:
    """Connections one address may have waiting for their A-ASSOCIATE-RQ at a time."""
    return max(16, 2 * max_conns)


@dataclass(frozen=True)
class GuardLimits:
    max_associations: int
    per_address: int
    handshake_timeout: float
    pending_per_address: int


def host_of(address: Any) -> str:
    """The peer's IP address as a string (IPv4-mapped IPv6 as IPv4)."""
    host = str(address[0]) if isinstance(address, tuple) else str(address)
    return host.removeprefix("::ffff:")


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from accept to close."""

    sock: socket.socket
    host: str
    port: int
    deadline: float
    #: pending (no A-ASSOCIATE-RQ yet), associated (holds a slot), expired (shut down by
    #: the watchdog), closed
    state: str = "pending"
    association: Association | None = field(default=None, repr=False)
    #: a warning about this connection is in the log already (PeerErrorFilter adds none)
    reported: bool = False

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class ConnectionGuard:
    """Book-keeping of the receiver's connections, under one lock, plus the watchdog."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._by_socket: dict[socket.socket, Connection] = {}
        self._by_association: weakref.WeakKeyDictionary[Association, Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._pending: Counter[str] = Counter()
        self._associated: Counter[str] = Counter()
        self._deadlines: list[tuple[float, int, Connection]] = []
        self._seq = 0
        self._wake = threading.Condition(self._lock)
        self._stopped = False
        self._thread: threading.Thread | None = None
        #: connections shut down by the watchdog, and closed at accept
        self.expired_count = 0
        self.closed_at_accept = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="scp-handshake-watchdog")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(2.0)

    # -- the connection's life --------------------------------------------------------------

    def accept(self, sock: socket.socket, address: Any) -> Connection | None:
        """Register a just-accepted connection; None when its address already has too many
        pending ones (the caller closes it)."""
        host = host_of(address)
        port = int(address[1]) if isinstance(address, tuple) else 0
        with self._wake:
            if self._pending[host] >= self.limits.pending_per_address:
                self.closed_at_accept += 1
                refused = True
            else:
                refused = False
                conn = Connection(
                    sock, host, port, time.monotonic() + self.limits.handshake_timeout
                )
                self._by_socket[sock] = conn
                self._pending[host] += 1
                self._seq += 1
                heapq.heappush(self._deadlines, (conn.deadline, self._seq, conn))
                self._wake.notify_all()
        if refused:
            log.warning(
                "connection from %s:%d closed at once: %d connections from %s are already "
                "waiting to ask for an association (at most %d)",
                host,
                port,
                self.limits.pending_per_address,
                host,
                self.limits.pending_per_address,
            )
            return None
        return conn

    def attach(self, sock: socket.socket, assoc: Association) -> Connection | None:
        with self._lock:
            conn = self._by_socket.get(sock)
            if conn is not None:
                conn.association = assoc
                self._by_association[assoc] = conn
            return conn

    def connection(self, assoc: Association) -> Connection | None:
        with self._lock:
            return self._by_association.get(assoc)

    def expired(self, sock: socket.socket) -> bool:
        """True when the watchdog shut this connection down (and said so in the log)."""
        with self._lock:
            conn = self._by_socket.get(sock)
            return conn is not None and conn.state == "expired"

    def report(self, assoc: Association) -> bool:
        """Mark the association's connection as reported in the log; False when it was
        already (say nothing more then)."""
        with self._lock:
            conn = self._by_association.get(assoc)
            if conn is None:
                return True
            first = not conn.reported
            conn.reported = True
            return first

    def admit(self, assoc: Association) -> str | None:
        """Called when the association's A-ASSOCIATE-RQ has arrived: None when it may go on
        (it now holds a slot), else why it must be rejected (A-ASSOCIATE-RJ 2, 3, 2)."""
        with self._lock:
            conn = self._by_association.get(assoc)
            if conn is None:  # not accepted through our server: nothing to count
                return None
            if conn.state == "expired":
                return "expired"
            limits = self.limits
            if sum(self._associated.values()) >= limits.max_associations:
                why = (
                    f"transient, local limit exceeded (--max-conns {limits.max_associations} "
                    "associations already active)"
                )
            elif self._associated[conn.host] >= limits.per_address:
                why = (
                    f"transient, local limit exceeded (--max-conns-per-address "
                    f"{limits.per_address} associations from {conn.host} already active)"
                )
            else:
                self._leave_pending(conn)
                conn.state = "associated"
                self._associated[conn.host] += 1
                return None
            return why

    def close(self, sock: socket.socket | None = None, assoc: Association | None = None) -> None:
        """The connection ended (its association's thread ended, or its TLS handshake or
        handler failed): free what it held."""
        with self._lock:
            conn = None
            if assoc is not None:
                conn = self._by_association.pop(assoc, None)
            if conn is None and sock is not None:
                conn = self._by_socket.get(sock)
            if conn is None or conn.state == "closed":
                return
            self._by_socket.pop(conn.sock, None)
            if conn.state == "associated":
                self._associated[conn.host] -= 1
                if self._associated[conn.host] <= 0:
                    del self._associated[conn.host]
            else:
                self._leave_pending(conn)
            conn.state = "closed"

    def counts(self) -> tuple[int, int]:
        """(pending connections, associations holding a slot)."""
        with self._lock:
            return sum(self._pending.values()), sum(self._associated.values())

    def _leave_pending(self, conn: Connection) -> None:
        if conn.state in ("pending", "expired"):
            self._pending[conn.host] -= 1
            if self._pending[conn.host] <= 0:
                del self._pending[conn.host]

    # -- the watchdog -----------------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            due: list[Connection] = []
            with self._wake:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, _, conn = heapq.heappop(self._deadlines)
                    if conn.state == "pending":
                        conn.state = "expired"
                        conn.reported = True
                        self.expired_count += 1
                        due.append(conn)
                if not due:
                    wait = self._deadlines[0][0] - now if self._deadlines else None
                    self._wake.wait(wait)
                    continue
            for conn in due:
                log.warning(
                    "connection from %s closed: no association request within %g s "
                    "(--handshake-timeout)",
                    conn.where,
                    self.limits.handshake_timeout,
                )
                # shutdown, not close: it wakes a thread blocked reading this socket (a
                # silent peer, a stalled TLS handshake or PDU) with end-of-file, and the
                # socket is then closed by its owner as on any lost connection. The base
                # method also for TLS sockets: SSLSocket.shutdown would drop its SSL object
                # under the feet of the thread in its handshake.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)


def peer(assoc: Association) -> str:
    """``AE@host:port`` of the association's requestor, for the log."""
    req = assoc.requestor
    title = req.ae_title or ""
    if not title and req.primitive is not None:  # requested, not yet negotiated
        title = str(req.primitive.calling_ae_title or "")
    title = title.strip()
    return f"{title or '?'}@{req.address}:{req.port}"


def association_of_current_thread() -> Association | None:
    """The association whose acceptor or DUL thread is running, if any."""
    thread = threading.current_thread()
    if isinstance(thread, Association):
        return thread
    if isinstance(thread, DULServiceProvider):
        return thread.assoc
    return None


#: pynetdicom's ERROR messages that are followed by a record with the exception.
_FOLLOWED_BY_EXCEPTION = (
    "Connection closed before the entire PDU was received",
    "Unable to decode the received PDU data",
    "Received an invalid DIMSE message",
    "Exception in DUL.run()",
    "State Machine received an exception",
    "Exception raised in user's",
)
#: In pynetdicom's event logger, only its own logging handlers (fed with the peer's bytes)
#: fail because of a peer; an exception in one of ours is a bug, shown with its traceback.
_PYNETDICOM_HANDLERS = "'standard_"
_PASS = "\0pass"


class PeerErrorFilter(logging.Filter):
    """One WARNING line naming the peer instead of pynetdicom's ERROR lines and traceback.

    Attached to pynetdicom's loggers of PDU and DIMSE decoding (``PYNETDICOM_PEER_LOGGERS``).
    It acts only on records logged from an association accepted through ``guard`` (its own
    thread or its DUL's), at ERROR or above: lower levels (``-vv``) and other associations
    pass untouched. The first
    such record of a connection becomes the warning (an error message followed by its
    exception record is merged into one line); later ones, and all of a connection that was
    reported already (by the watchdog or by our PDU reads), are dropped.
    ``Network timeout reached`` is dropped: the server logs its own idle-timeout line.
    """

    def __init__(self, guard: ConnectionGuard) -> None:
        super().__init__()
        self._guard = guard
        self._pending: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        assoc = association_of_current_thread()
        if assoc is None or not assoc.is_acceptor or self._guard.connection(assoc) is None:
            return True
        message = _one_line(record)
        if message == "Network timeout reached":
            return False
        with self._lock:
            if record.exc_info is None and message.startswith(_FOLLOWED_BY_EXCEPTION):
                ours = record.name == "pynetdicom.events" and _PYNETDICOM_HANDLERS not in message
                self._pending[assoc] = _PASS if ours else message
                return ours
            first = self._pending.pop(assoc, None)
            if first == _PASS:
                return True
        if self._guard.report(assoc):
            text = f"{first}: {message}" if first else message
            log.warning("association from %s dropped: %s", peer(assoc), text[:300])
        return False


def _one_line(record: logging.LogRecord) -> str:
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        text = record.getMessage()
    return " ".join(text.split())
