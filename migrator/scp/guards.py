"""Association-level guards of `migrator scp` against peers that hold its slots.

Every accepted TCP connection is *pending* until its A-ASSOCIATE-RQ is in:

* it must send the whole request (TLS handshake included) within ``handshake_timeout`` of
  its accept, or it is closed (the acceptor's deadline, ``migrator.dul.reader``), wherever
  it stalls (silent, or trickling bytes: a per-read timeout alone would let one byte every
  few seconds go on for ever);
* a pending connection takes no association slot: ``--max-conns`` counts the connections
  that have asked for an association, and is enforced here, when the request arrives;
* one address may hold at most ``per_address`` of those slots, and at most
  ``pending_per_address`` pending connections (more are closed at accept);
* the idle timeout of established associations is the acceptor's (``ScpConfig.idle_timeout``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

log = logging.getLogger("migrator.scp")
_T = TypeVar("_T")


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
    #: pending (no A-ASSOCIATE-RQ yet), associated (holds a slot), closed
    state: str = "pending"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class Book(Protocol):
    """Where the guard keeps its counts; every method but ``lock`` is called with
    ``lock`` held."""

    lock: Any

    def pending(self, host: str) -> int | None:
        """None: the book has no room for one more address (the connection is closed)."""
        ...

    def associated(self, host: str) -> int: ...

    def totals(self) -> tuple[int, int]:
        """(pending connections, associations holding a slot), all addresses."""
        ...

    def add(self, host: str, pending: int, associated: int) -> None: ...

    def bump(self, event: str) -> None: ...

    def events(self, event: str) -> int: ...


class LocalBook:
    """The guard's counts in one process: per address, pending connections and
    associations holding a slot, and two event counters (``migrator.scp.processes`` has
    the same counts in memory shared by several receiving processes)."""

    def __init__(self) -> None:
        self.lock: Any = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._associated: Counter[str] = Counter()
        self._events: Counter[str] = Counter()

    # Called with ``lock`` held.
    def pending(self, host: str) -> int:
        return self._pending[host]

    def associated(self, host: str) -> int:
        return self._associated[host]

    def totals(self) -> tuple[int, int]:
        return sum(self._pending.values()), sum(self._associated.values())

    def add(self, host: str, pending: int, associated: int) -> None:
        for counts, delta in ((self._pending, pending), (self._associated, associated)):
            if delta:
                counts[host] += delta
                if counts[host] <= 0:
                    del counts[host]

    def bump(self, event: str) -> None:
        self._events[event] += 1

    def events(self, event: str) -> int:
        return self._events[event]


class ConnectionGuard:
    """Book-keeping of the receiver's connections, under the book's lock."""

    def __init__(self, limits: GuardLimits, book: Book | None = None) -> None:
        self.limits = limits
        self.book = book if book is not None else LocalBook()
        self._lock = self.book.lock

    def summary_line(self, wait: float | None = None) -> str:
        """The shutdown summary's line about connections that never associated. ``wait``:
        how long to wait for the book's lock (a receiving process killed while holding a
        shared one leaves it taken): "unknown" after that."""
        counts = self._read(
            lambda book: (book.events("expired"), book.events("closed_at_accept")), wait
        )
        if counts is None:
            return "Connections closed without an association request: unknown"
        expired, closed = counts
        return (
            f"Connections closed without an association request: {expired} "
            f"(--handshake-timeout), {closed} at once (too many waiting from one address)"
        )

    def accept(self, sock: socket.socket, address: Any) -> Connection | None:
        """Register a just-accepted connection; None when its address already has too many
        pending ones (the caller closes it)."""
        host = host_of(address)
        port = int(address[1]) if isinstance(address, tuple) else 0
        book = self.book
        with self._lock:
            pending = book.pending(host)
            if pending is None or pending >= self.limits.pending_per_address:
                book.bump("closed_at_accept")
                conn = None
            else:
                conn = Connection(sock, host, port)
                book.add(host, 1, 0)
        if pending is None:
            log.warning(
                "connection from %s:%d closed at once: connections from too many addresses at once",
                host,
                port,
            )
        elif conn is None:
            log.warning(
                "connection from %s:%d closed at once: %d connections from %s are already "
                "waiting to ask for an association (at most %d)",
                host,
                port,
                self.limits.pending_per_address,
                host,
                self.limits.pending_per_address,
            )
        return conn

    def expired(self, conn: Connection) -> None:
        """The connection sent no association request in time (and is closed)."""
        with self._lock:
            self.book.bump("expired")
        log.warning(
            "connection from %s closed: no association request within %g s (--handshake-timeout)",
            conn.where,
            self.limits.handshake_timeout,
        )

    def admit(self, conn: Connection) -> str | None:
        """Called when the association's A-ASSOCIATE-RQ has arrived: None when it may go on
        (it now holds a slot), else why it must be rejected (A-ASSOCIATE-RJ 2, 3, 2)."""
        limits, book = self.limits, self.book
        with self._lock:
            if book.totals()[1] >= limits.max_associations:
                return (
                    f"transient, local limit exceeded (--max-conns {limits.max_associations} "
                    "associations already active)"
                )
            if book.associated(conn.host) >= limits.per_address:
                return (
                    f"transient, local limit exceeded (--max-conns-per-address "
                    f"{limits.per_address} associations from {conn.host} already active)"
                )
            book.add(conn.host, -1 if conn.state == "pending" else 0, 1)
            conn.state = "associated"
            return None

    def close(self, conn: Connection) -> None:
        """The connection ended: free what it held."""
        with self._lock:
            if conn.state == "associated":
                self.book.add(conn.host, 0, -1)
            elif conn.state == "pending":
                self.book.add(conn.host, -1, 0)
            conn.state = "closed"

    def counts(self, wait: float | None = None) -> tuple[int, int] | None:
        """(pending connections, associations holding a slot); None when the lock could
        not be had within ``wait`` seconds."""
        return self._read(lambda book: book.totals(), wait)

    def _read(self, what: Callable[[Book], _T], wait: float | None) -> _T | None:
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            return None
        try:
            return what(self.book)
        finally:
            self._lock.release()
