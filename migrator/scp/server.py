"""`migrator scp`: a Storage SCP that writes what it receives, byte for byte.

Built on our own upper layer (``migrator.dul.listener`` and ``migrator.dul.acceptor``): one
thread per connection reads its PDUs, and each C-STORE's dataset goes straight into its
file behind the File Meta we write (``migrator.scp.incoming``), then is renamed into the
output tree, path-safe and atomic. Nothing is decoded beyond the few header elements that
name the file, so any transfer syntax is stored as received. What is answered to each
C-STORE, and what is logged, is ``migrator.scp.receiving``'s.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from migrator.dul import acceptor
from migrator.dul.acse import ContextPolicy
from migrator.dul.dimse import VERIFICATION_SOP_CLASS
from migrator.dul.listener import (
    Listener,
    TlsFailed,
    client_speaks_tls,
    close_after_alert,
    tls_accept,
)
from migrator.dul.reader import HandshakeExpired
from migrator.dul.tls import TlsSettings, handshake_failure
from migrator.scp.faults import FaultInjector, FaultPlan
from migrator.scp.guards import (
    Book,
    Connection,
    ConnectionGuard,
    GuardLimits,
    default_per_address,
    pending_per_address,
)
from migrator.scp.network import ListenError, listen_message
from migrator.scp.receiving import ScpHandler, sop_name
from migrator.scp.stats import ScpStats

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("migrator.scp")

#: How long a stopping receiver lets aborted associations' threads finish their write.
_STOP_JOIN_SECONDS = 2.0
#: The uncompressed syntaxes C-ECHO is accepted in (its context carries no dataset).
_ECHO_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
)

__all__ = ["ScpConfig", "StorageSCP", "sop_name"]


@dataclass(frozen=True)
class ScpConfig:
    output_dir: Path
    port: int = 11112
    bind: str = "0.0.0.0"
    ae_title: str = "MIGRATOR-SCP"
    max_pdu: int = 16384
    max_conns: int = 10
    organize: bool = True
    accept_echo: bool = True
    #: SOP Class UIDs to accept; empty means every storage SOP class pynetdicom knows.
    sop_classes: tuple[str, ...] = ()
    faults: FaultPlan = field(default_factory=FaultPlan)
    stats_interval: float = 30.0
    #: DICOM TLS only (None: plain TCP); with ``tls.ca`` client certificates are required
    tls: TlsSettings | None = None
    #: Seconds a peer may stall in the middle of a PDU (or a TLS handshake) before the
    #: connection is dropped.
    io_timeout: float = 60.0
    #: Seconds from accept to a complete A-ASSOCIATE-RQ (TLS handshake included).
    handshake_timeout: float = 5.0
    #: Seconds an established association may stay without a PDU from the peer.
    idle_timeout: float = 30.0
    #: Associations one address may hold (None: ``default_per_address(max_conns)``).
    max_conns_per_address: int | None = None

    @property
    def per_address(self) -> int:
        if self.max_conns_per_address is None:
            return default_per_address(self.max_conns)
        return min(self.max_conns_per_address, self.max_conns)


def context_policy(config: ScpConfig) -> ContextPolicy:
    """Verification (with ``accept_echo``) and the storage SOP classes, each in every
    transfer syntax pynetdicom knows: the dataset is stored as received, so no codec is
    ever needed. The lists are pynetdicom's (read once, at start-up)."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

    every = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)
    if config.sop_classes:
        uids = list(config.sop_classes)
    else:
        uids = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    syntaxes: dict[str, frozenset[str]] = dict.fromkeys(uids, every)
    if config.accept_echo:
        syntaxes[VERIFICATION_SOP_CLASS] = frozenset(_ECHO_SYNTAXES)
    else:
        syntaxes.pop(VERIFICATION_SOP_CLASS, None)
    return ContextPolicy(syntaxes)


class StorageSCP:
    """A running (or startable) receiver. Usable in-process by tests."""

    def __init__(
        self,
        config: ScpConfig,
        *,
        book: Book | None = None,
        stats: ScpStats | None = None,
    ) -> None:
        """``book`` and ``stats``: counts shared with other receiving processes
        (``migrator.scp.processes``); this process's own by default."""
        self.config = config
        self.stats = stats if stats is not None else ScpStats()
        self.faults = FaultInjector(config.faults)
        self._listener: Listener | None = None
        # Built now: unusable TLS files are a ConfigError before anything listens.
        self._ssl_context = cfg_tls.server_context() if (cfg_tls := config.tls) else None
        self.guard = ConnectionGuard(
            GuardLimits(
                max_associations=config.max_conns,
                per_address=config.per_address,
                handshake_timeout=config.handshake_timeout,
                pending_per_address=pending_per_address(config.max_conns),
            ),
            book,
        )
        self.handler = ScpHandler(config, self.guard, self.stats, self.faults)
        self._policy: ContextPolicy | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Bind (or serve ``sock``, already listening) and start serving in background
        threads; return the bound (host, port).

        Raises ListenError (port in use, permission denied, bad address).
        """
        cfg = self.config
        try:
            listener = Listener(cfg.bind, cfg.port, self._connection, self._screen, sock=sock)
        except OSError as exc:
            raise ListenError(listen_message(cfg.bind, cfg.port, exc)) from exc
        # After the bind: a port in use is said without waiting for pynetdicom's import.
        self._policy = context_policy(cfg)
        listener.start()
        self._listener = listener
        return listener.address

    def log_banner(self, host: str, port: int) -> None:
        cfg = self.config
        log.info("Storage SCP listening on %s:%d as AE %s", host, port, cfg.ae_title)
        log.info(
            "output: %s (%s), C-ECHO %s, max connections %d, max PDU %d, SOP classes: %s",
            cfg.output_dir,
            "organized Study/Series/SOP.dcm" if cfg.organize else "flat SOP.dcm",
            "on" if cfg.accept_echo else "off",
            cfg.max_conns,
            cfg.max_pdu,
            ", ".join(sop_name(u) for u in cfg.sop_classes) or "all storage",
        )
        log.info(
            "limits: %d associations per address, association request within %g s of "
            "connecting, idle associations closed after %g s",
            cfg.per_address,
            cfg.handshake_timeout,
            cfg.idle_timeout,
        )
        if cfg.tls is not None:
            log.info(
                "DICOM TLS only: certificate %s; %s",
                cfg.tls.cert,
                f"client certificates required, signed by {cfg.tls.ca}"
                if cfg.tls.ca
                else "client certificates not checked (no --tls-ca)",
            )
        if cfg.faults.active:
            log.warning("fault injection active: %s", cfg.faults.describe())

    def serve_until(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set, logging statistics every ``stats_interval``."""
        while not stop.wait(self.config.stats_interval):
            log.info("statistics: %s", self.stats.as_line(len(self.active_associations())))

    def active_associations(self) -> list[acceptor.Accepted]:
        """Connections being served (associations, and requests on their way)."""
        return list(self.handler.connections)

    def stop(self) -> None:
        """Stop accepting, abort associations still open, wait briefly for their threads."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.stop()
        active = self.active_associations()
        if active:
            log.warning("aborting %d active association(s)", len(active))
            for assoc in active:
                assoc.abort()
        listener.join(_STOP_JOIN_SECONDS)

    def summary_lines(self) -> list[str]:
        return [*self.stats.summary_lines(), self.guard.summary_line()]

    # -- connections ----------------------------------------------------------------------

    def _screen(self, sock: socket.socket, address: tuple[str, int]) -> Connection | None:
        """In the accept thread: keep the connection unless its address has too many
        waiting already."""
        return self.guard.accept(sock, address)

    def _connection(self, sock: socket.socket, address: tuple[str, int], conn: Connection) -> None:
        """In the connection's own thread: TLS, then the association to its end."""
        cfg = self.config
        deadline = time.monotonic() + cfg.handshake_timeout
        assoc = acceptor.Accepted(sock, conn.host, conn.port)
        self.handler.connections[assoc] = conn
        if self._ssl_context is not None:
            tls = self._tls(assoc, sock, self._ssl_context, deadline)
            if tls is None:
                return
            assoc.sock = tls
        assert self._policy is not None  # set before the listener starts
        settings = acceptor.Settings(
            policy=self._policy,
            max_pdu=cfg.max_pdu,
            handshake_deadline=deadline,
            stall_timeout=cfg.io_timeout,
            idle_timeout=cfg.idle_timeout,
        )
        acceptor.serve(assoc, self.handler, settings)

    def _tls(
        self,
        assoc: acceptor.Accepted,
        sock: socket.socket,
        context: ssl.SSLContext,
        deadline: float,
    ) -> ssl.SSLSocket | None:
        try:
            return tls_accept(sock, context, deadline)
        except HandshakeExpired:
            self.handler.ended(assoc, acceptor.End.HANDSHAKE, "TLS handshake not done in time")
            return None
        except TlsFailed as failed:
            self.handler.ended(assoc, acceptor.End.CLOSED, "TLS handshake failed")
            self.stats.association_rejected()
            log.warning(
                "TLS handshake with %s:%d failed: %s",
                assoc.host,
                assoc.port,
                handshake_failure(failed.cause, receiver=True),
            )
            if client_speaks_tls(failed.cause):
                close_after_alert(failed.sock)
            else:
                with contextlib.suppress(OSError):
                    failed.sock.close()
            return None
