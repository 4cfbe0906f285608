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
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("migrator.scp")


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


class ConnectionGuard:
    """Book-keeping of the receiver's connections, under one lock."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._associated: Counter[str] = Counter()
        #: connections closed for want of a request in time, and closed at accept
        self.expired_count = 0
        self.closed_at_accept = 0

    def accept(self, sock: socket.socket, address: Any) -> Connection | None:
        """Register a just-accepted connection; None when its address already has too many
        pending ones (the caller closes it)."""
        host = host_of(address)
        port = int(address[1]) if isinstance(address, tuple) else 0
        with self._lock:
            if self._pending[host] >= self.limits.pending_per_address:
                self.closed_at_accept += 1
                conn = None
            else:
                conn = Connection(sock, host, port)
                self._pending[host] += 1
        if conn is None:
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
            self.expired_count += 1
        log.warning(
            "connection from %s closed: no association request within %g s (--handshake-timeout)",
            conn.where,
            self.limits.handshake_timeout,
        )

    def admit(self, conn: Connection) -> str | None:
        """Called when the association's A-ASSOCIATE-RQ has arrived: None when it may go on
        (it now holds a slot), else why it must be rejected (A-ASSOCIATE-RJ 2, 3, 2)."""
        limits = self.limits
        with self._lock:
            if sum(self._associated.values()) >= limits.max_associations:
                return (
                    f"transient, local limit exceeded (--max-conns {limits.max_associations} "
                    "associations already active)"
                )
            if self._associated[conn.host] >= limits.per_address:
                return (
                    f"transient, local limit exceeded (--max-conns-per-address "
                    f"{limits.per_address} associations from {conn.host} already active)"
                )
            self._leave_pending(conn)
            conn.state = "associated"
            self._associated[conn.host] += 1
            return None

    def close(self, conn: Connection) -> None:
        """The connection ended: free what it held."""
        with self._lock:
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
        if conn.state == "pending":
            self._pending[conn.host] -= 1
            if self._pending[conn.host] <= 0:
                del self._pending[conn.host]
