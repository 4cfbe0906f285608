"""`migrator scp`: a Storage SCP that writes what it receives, byte for byte.

Built on pynetdicom's ``AE.start_server``; one thread per association runs the handlers
below. Received datasets are spooled to disk by pynetdicom itself
(``STORE_RECV_CHUNKED_DATASET``), then copied behind our own File Meta into the output
tree by ``storage`` (path-safe and atomic). Nothing is decoded beyond the few header
elements that name the file, so any transfer syntax is stored as received.

Statuses answered by the receiver itself (fault injection aside, see ``faults``):

=========  ================================================================
``0x0000`` written to ``OUTPUT/<Study>/<Series>/<SOP>.dcm`` (or ``OUTPUT/<SOP>.dcm``)
``0xC000`` cannot understand: the dataset is unreadable, a UID needed for the path is
           missing or not a valid UID (``../x``, ``/``, NUL...), or the dataset's SOP
           Instance UID differs from the C-STORE request's; nothing is written
``0xA700`` out of resources: writing failed (disk full, permission, I/O error)
=========  ================================================================
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from migrator.dicomfile import inspect_file
from migrator.dul.dimse import VERIFICATION_SOP_CLASS
from migrator.dul.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from migrator.dul.tls import TlsSettings, handshake_failure
from migrator.errors import SourceError
from migrator.netutil import patch_pynetdicom_nodelay
from migrator.scp.faults import Action, FaultInjector, FaultPlan
from migrator.scp.guards import (
    PYNETDICOM_PEER_LOGGERS,
    ConnectionGuard,
    GuardLimits,
    PeerErrorFilter,
    default_per_address,
    peer,
    pending_per_address,
)
from migrator.scp.network import (
    ListenError,
    ScpAE,
    discard_spooled,
    listen_message,
    remove_spool,
)
from migrator.scp.stats import ScpStats
from migrator.scp.storage import (
    UnsafeUIDError,
    file_meta,
    relative_path,
    write_instance,
)

log = logging.getLogger("migrator.scp")

STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700
#: How long a stopping receiver lets aborted associations' handlers finish their write.
_STOP_JOIN_SECONDS = 2.0
#: pynetdicom's own association limit, left to the guard.
_UNLIMITED = 1_000_000

# PS3.8 §9.3.3.2 presentation context results, for the log.
_CONTEXT_RESULTS = {
    1: "user rejection",
    2: "no reason",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}


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


def sop_name(uid: str) -> str:
    """``CT Image Storage`` for a known UID, the UID itself otherwise."""
    return UID(uid).name if uid else "(no SOP class)"


class StorageSCP:
    """A running (or startable) receiver. Usable in-process by tests."""

    def __init__(self, config: ScpConfig) -> None:
        self.config = config
        self.stats = ScpStats()
        self.faults = FaultInjector(config.faults)
        self._server: ThreadedAssociationServer | None = None
        # Built now: unusable TLS files are a ConfigError before anything listens.
        self._ssl_context = cfg_tls.server_context() if (cfg_tls := config.tls) else None
        self.guard = ConnectionGuard(
            GuardLimits(
                max_associations=config.max_conns,
                per_address=config.per_address,
                handshake_timeout=config.handshake_timeout,
                pending_per_address=pending_per_address(config.max_conns),
            )
        )
        self._peer_errors = PeerErrorFilter(self.guard)
        self._ae = self._build_ae()

    def _build_ae(self) -> AE:
        cfg = self.config
        ae = ScpAE(ae_title=cfg.ae_title)
        ae.io_timeout = cfg.io_timeout
        ae.guard = self.guard
        # An acceptor's ACSE timeout: the time to send the A-ASSOCIATE-RQ (ARTIM; the
        # guard's watchdog also ends a stalled one), and to close after an A-ABORT/-RJ.
        ae.acse_timeout = cfg.handshake_timeout
        # The idle timer: an established association without a PDU for this long is
        # aborted (A-ABORT); _on_aborted says so.
        ae.network_timeout = cfg.idle_timeout
        ae.on_tls_failure = self._on_tls_failure
        ae.on_association_end = discard_spooled
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION
        ae.maximum_pdu_size = cfg.max_pdu
        # pynetdicom rejects an association when more than this many acceptors are
        # active, counting connections that have not asked for one yet: silent ones
        # would take every slot. The guard counts only associations that were asked for
        # (--max-conns, --max-conns-per-address) and rejects in _on_requested.
        ae.maximum_associations = _UNLIMITED
        # A called AE title mismatch is accepted, as most test receivers do (storescp).
        ae.require_called_aet = False
        if cfg.accept_echo:
            ae.add_supported_context(VERIFICATION_SOP_CLASS, ALL_TRANSFER_SYNTAXES[:4])
        if cfg.sop_classes:
            uids = list(cfg.sop_classes)
        else:
            from pynetdicom import AllStoragePresentationContexts

            uids = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
        for uid in uids:
            # Every transfer syntax pynetdicom knows: the dataset is stored as received,
            # so we never need a codec for it.
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        return ae

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and start serving in background threads; return the bound (host, port).

        Raises ListenError (port in use, permission denied, bad address).
        """
        patch_pynetdicom_nodelay()
        # Spool each received dataset to a temporary file instead of memory, exposed as
        # event.dataset_path: a multi-GB instance then costs no RAM. Process-wide.
        _config.STORE_RECV_CHUNKED_DATASET = True
        handlers: list[Any] = [
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        cfg = self.config
        try:
            server = self._ae.start_server(
                (cfg.bind, cfg.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=self._ssl_context,
            )
        except OSError as exc:
            raise ListenError(listen_message(cfg.bind, cfg.port, exc)) from exc
        assert server is not None  # block=False always returns the server
        self._server = server
        self.guard.start()
        for name in PYNETDICOM_PEER_LOGGERS:
            logging.getLogger(name).addFilter(self._peer_errors)
        host, port = server.server_address[:2]
        return str(host), int(port)

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
            log.info("statistics: %s", self.stats.as_line(self.active_associations()))

    def active_associations(self) -> list[Association]:
        return list(self._server.active_associations) if self._server else []

    def stop(self) -> None:
        """Stop accepting, abort associations still open, wait briefly for handlers."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        self.guard.stop()
        for name in PYNETDICOM_PEER_LOGGERS:
            logging.getLogger(name).removeFilter(self._peer_errors)
        active = list(server.active_associations)
        if active:
            log.warning("aborting %d active association(s)", len(active))
            for assoc in active:
                assoc.abort()
            deadline = time.monotonic() + _STOP_JOIN_SECONDS
            for assoc in active:
                assoc.join(max(0.0, deadline - time.monotonic()))

    def summary_lines(self) -> list[str]:
        return [
            *self.stats.summary_lines(),
            f"Connections closed without an association request: {self.guard.expired_count} "
            f"(--handshake-timeout), {self.guard.closed_at_accept} at once (too many "
            "waiting from one address)",
        ]

    # -- association events -------------------------------------------------------------

    def _on_conn_close(self, event: evt.Event) -> None:
        assoc = event.assoc
        if assoc.is_acceptor and assoc.requestor.primitive is None:
            # The connection ended before any A-ASSOCIATE-RQ (closed at once, garbage, a
            # stalled PDU). pynetdicom's acceptor would still wait the whole ACSE timeout
            # for that request, holding one of the --max-conns slots: a few connect-and-
            # close loops would lock every sender out. None is what its wait returns on
            # timeout, so the association ends now, the pynetdicom way.
            assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]  # its sentinel

    def _on_tls_failure(self, address: Any, exc: BaseException) -> None:
        self.stats.association_rejected()
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        log.warning(
            "TLS handshake with %s failed: %s", where, handshake_failure(exc, receiver=True)
        )

    def _on_requested(self, event: evt.Event) -> None:
        if not self.config.faults.refuse:
            self._admit(event.assoc)
            return
        self.stats.association_rejected()
        log.info(
            "rejected association from %s: permanent, service user, no reason given "
            "(fault injection: --refuse)",
            peer(event.assoc),
        )
        # pynetdicom skips negotiation when is_rejected is set after EVT_REQUESTED. kill()
        # then waits (as pynetdicom's own rejection path does) until the DUL is idle,
        # i.e. the peer has read the A-ASSOCIATE-RJ and closed, or the ARTIM timer ran
        # out: closing the socket at once would make the peer see an abort instead.
        event.assoc.acse.send_reject(0x01, 0x01, 0x01)
        event.assoc.kill()

    def _admit(self, assoc: Association) -> None:
        """Take a slot for the association, or reject it: A-ASSOCIATE-RJ (2, 3, 2) =
        transient, presentation layer, local limit exceeded."""
        why = self.guard.admit(assoc)
        if why is None:
            return
        if why == "expired":  # the watchdog shut it down, and said so
            assoc.kill()
            return
        self.stats.association_rejected()
        log.warning("rejected association from %s: %s", peer(assoc), why)
        # As for --refuse: kill() waits until the peer has read the rejection and closed.
        assoc.acse.send_reject(0x02, 0x03, 0x02)
        assoc.kill()

    def _on_established(self, event: evt.Event) -> None:
        assoc = event.assoc
        self.stats.association_accepted()
        rejected = assoc.rejected_contexts
        log.info(
            "association from %s accepted: %d presentation context(s) accepted, %d rejected",
            peer(assoc),
            len(assoc.accepted_contexts),
            len(rejected),
        )
        for cx in rejected:
            self.stats.context_rejected()
            log.info(
                "rejected presentation context %s (%s) from %s: %s",
                sop_name(str(cx.abstract_syntax)),
                cx.abstract_syntax,
                peer(assoc),
                _CONTEXT_RESULTS.get(cx.result or 0, f"result {cx.result}"),
            )

    def _on_rejected(self, event: evt.Event) -> None:
        # pynetdicom's own rejections (the association limits are the guard's: _admit)
        self.stats.association_rejected()
        rj = event.assoc.acceptor.primitive
        log.warning(
            "rejected association from %s: result %s, source %s, reason %s",
            peer(event.assoc),
            getattr(rj, "result", None),
            getattr(rj, "result_source", None),
            getattr(rj, "diagnostic", None),
        )

    def _on_aborted(self, event: evt.Event) -> None:
        assoc = event.assoc
        # Our own abort on the idle timer (a peer's A-ABORT restarts that timer first).
        if assoc.requestor.primitive is not None and assoc.dul.idle_timer_expired():
            if self.guard.report(assoc):
                log.warning(
                    "association from %s aborted: no PDU for %g s (--idle-timeout)",
                    peer(assoc),
                    self.config.idle_timeout,
                )
            return
        log.info("association from %s aborted", peer(assoc))

    # -- DIMSE services -----------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        self.stats.echo()
        log.info("C-ECHO from %s: Success", peer(event.assoc))
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        assoc = event.assoc
        request = event.request
        sop_class = str(getattr(request, "AffectedSOPClassUID", "") or "")
        decision = self.faults.on_store(assoc)
        self.stats.store_received()
        try:
            if decision.action is Action.ABORT:
                self.stats.store_failed(fault=True)
                log.info(
                    "C-STORE #%d from %s: %s not stored, association aborted "
                    "(fault injection: --abort-after %s)",
                    decision.number,
                    peer(assoc),
                    sop_name(sop_class),
                    self.config.faults.abort_after,
                )
                assoc.abort()
                return STATUS_OUT_OF_RESOURCES  # never sent: the association is gone
            if decision.action is Action.FAIL:
                status = decision.status if decision.status is not None else 0xA700
                self.stats.store_failed(fault=True)
                log.info(
                    "C-STORE #%d from %s: %s not stored, answered 0x%04X (fault injection)",
                    decision.number,
                    peer(assoc),
                    sop_name(sop_class),
                    status,
                )
                return status
            return self._store(event, sop_class, decision.number, started)
        except Exception:
            # A bug, not a peer problem: keep the counters honest and let pynetdicom
            # answer 0xC211 ("unable to process") for the raised exception. pynetdicom
            # removes the spooled dataset only after a handler that returned.
            self.stats.store_failed(fault=False)
            log.exception("C-STORE #%d from %s: handler error", decision.number, peer(assoc))
            remove_spool(request)
            raise
        finally:
            if self.config.faults.response_delay > 0 and decision.action is not Action.ABORT:
                time.sleep(self.config.faults.response_delay)
            # The peer is waiting for our answer, not idle: the time spent here (a slow
            # disk, --response-delay) does not count towards --idle-timeout.
            assoc.dul._idle_timer.restart()

    def _store(self, event: evt.Event, sop_class: str, number: int, started: float) -> int:
        who = peer(event.assoc)
        name = sop_name(sop_class)
        source: Path = event.dataset_path
        try:
            header = inspect_file(str(source))
        except SourceError as exc:
            return self._refused(number, who, name, f"unreadable dataset: {exc}")
        requested_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        if header.sop_instance_uid != requested_uid:
            return self._refused(
                number,
                who,
                name,
                f"dataset SOP Instance UID {header.sop_instance_uid[:80]!r} differs from the "
                f"C-STORE request's {requested_uid[:80]!r}",
            )
        try:
            rel = relative_path(
                header.study_uid, header.series_uid, header.sop_instance_uid, self.config.organize
            )
            meta = file_meta(
                sop_class,
                header.sop_instance_uid,
                str(event.context.transfer_syntax),
                event.assoc.requestor.ae_title,
            )
            final, replaced = write_instance(
                self.config.output_dir, rel, source, header.dataset_offset, meta
            )
        except UnsafeUIDError as exc:
            return self._refused(number, who, name, str(exc))
        except OSError as exc:
            self.stats.store_failed(fault=False)
            log.error(
                "C-STORE #%d from %s: %s not stored, write failed: %s (0x%04X)",
                number,
                who,
                name,
                exc.strerror or exc,
                STATUS_OUT_OF_RESOURCES,
            )
            return STATUS_OUT_OF_RESOURCES
        self.stats.store_succeeded()
        log.info(
            "C-STORE #%d from %s: %s stored as %s%s (%.1f MB, %s, %.1f ms)",
            number,
            who,
            name,
            rel,
            " (replaced an existing file)" if replaced else "",
            final.stat().st_size / 1e6,
            UID(str(event.context.transfer_syntax)).name,
            (time.perf_counter() - started) * 1000,
        )
        return STATUS_SUCCESS

    def _refused(self, number: int, who: str, name: str, why: str) -> int:
        self.stats.store_failed(fault=False)
        log.warning(
            "C-STORE #%d from %s: %s refused, %s (0x%04X)",
            number,
            who,
            name,
            why,
            STATUS_CANNOT_UNDERSTAND,
        )
        return STATUS_CANNOT_UNDERSTAND
