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

import contextlib
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from migrator.dicomfile import inspect_file
from migrator.dul.dimse import VERIFICATION_SOP_CLASS
from migrator.dul.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from migrator.dul.tls import TlsSettings, handshake_failure
from migrator.errors import MigratorError, SourceError
from migrator.netutil import patch_pynetdicom_nodelay
from migrator.scp.faults import Action, FaultInjector, FaultPlan
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

# PS3.8 §9.3.3.2 presentation context results, for the log.
_CONTEXT_RESULTS = {
    1: "user rejection",
    2: "no reason",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}


class ListenError(MigratorError):
    """The receiver could not listen on the requested address and port."""


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
    #: connection is dropped; idle associations are pynetdicom's business (network timeout).
    io_timeout: float = 60.0


def sop_name(uid: str) -> str:
    """``CT Image Storage`` for a known UID, the UID itself otherwise."""
    return UID(uid).name if uid else "(no SOP class)"


def _peer(assoc: Association) -> str:
    req = assoc.requestor
    return f"{req.ae_title.strip() or '?'}@{req.address}:{req.port}"


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, with two changes for hostile or broken peers.

    * Every accepted socket gets a timeout (``ScpConfig.io_timeout``). pynetdicom reads a
      whole PDU in blocking ``recv`` calls on a socket without one, and checks its timers
      only between PDUs: a peer that stops in the middle of a PDU held the association
      thread (and a ``--max-conns`` slot) forever.
    * The TLS handshake runs in the connection's own thread. pynetdicom performs it in
      ``get_request``, i.e. in the one thread that accepts connections: a single client
      that connected and never spoke TLS blocked every later connection.
    """

    ae: _ScpAE

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.ae.io_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError) as exc:
                self.ae.on_tls_failure(client_address, exc)
                if _client_speaks_tls(exc):
                    _close_after_alert(request)
                else:
                    with contextlib.suppress(OSError):
                        request.close()
                return
        super().process_request_thread(request, client_address)


#: How long a refused TLS client gets to read our alert and close first.
_ALERT_LINGER = 2.0


def _client_speaks_tls(exc: BaseException) -> bool:
    """False when the handshake failed because the client sent no TLS at all."""
    reason = str(getattr(exc, "reason", "") or "").upper()
    return reason not in {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"}


def _close_after_alert(request: ssl.SSLSocket) -> None:
    """Close a connection whose TLS handshake failed so that the client reads why.

    OpenSSL has sent the alert (certificate required, unknown CA...). With TLS 1.3 the
    client believes the handshake done and has already sent its A-ASSOCIATE-RQ: closing
    with those bytes unread would send a TCP reset, which can destroy the alert before
    the client reads it (it then only sees a connection reset). So read and drop what it
    sends until it closes, for ``_ALERT_LINGER`` seconds at most, then close.
    """
    try:
        raw = socket.socket(fileno=request.detach())
    except OSError:
        return
    with raw:
        deadline = time.monotonic() + _ALERT_LINGER
        with contextlib.suppress(OSError):
            while (left := deadline - time.monotonic()) > 0:
                raw.settimeout(left)
                if not raw.recv(65536):
                    break


class _RequestHandler(RequestHandler):
    """pynetdicom's handler (``handle`` as in pynetdicom 3.0), plus a last word for each
    association, run by its own thread once everything else in it has stopped."""

    server: _Server

    def handle(self) -> None:
        assoc = self._create_association()
        _guard_dimse_decoding(assoc)
        _bound_pdu_reads(assoc, self.server.ae.maximum_pdu_size)
        run = assoc.run

        def run_then_clean_up() -> None:
            try:
                run()
            finally:
                self.server.ae.on_association_end(assoc)

        assoc.run = run_then_clean_up  # type: ignore[method-assign]
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class _ScpAE(AE):
    """An AE whose servers are ``_Server``s with ``_RequestHandler``s."""

    io_timeout: float = 60.0
    #: Called with (peer address, exception) when a TLS handshake fails
    on_tls_failure: Callable[[Any, BaseException], None] = staticmethod(lambda a, e: None)
    #: Called with the association when its thread ends
    on_association_end: Callable[[Association], None] = staticmethod(lambda a: None)

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_class"] = _Server
        kwargs["request_handler"] = _RequestHandler
        return super().make_server(*args, **kwargs)


class StorageSCP:
    """A running (or startable) receiver. Usable in-process by tests."""

    def __init__(self, config: ScpConfig) -> None:
        self.config = config
        self.stats = ScpStats()
        self.faults = FaultInjector(config.faults)
        self._server: ThreadedAssociationServer | None = None
        # Built now: unusable TLS files are a ConfigError before anything listens.
        self._ssl_context = cfg_tls.server_context() if (cfg_tls := config.tls) else None
        self._ae = self._build_ae()

    def _build_ae(self) -> AE:
        cfg = self.config
        ae = _ScpAE(ae_title=cfg.ae_title)
        ae.io_timeout = cfg.io_timeout
        ae.on_tls_failure = self._on_tls_failure
        ae.on_association_end = _discard_spooled
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION
        ae.maximum_pdu_size = cfg.max_pdu
        # pynetdicom rejects an association when more than this many acceptors are
        # active: A-ASSOCIATE-RJ (2, 3, 2) = transient, presentation layer, local limit
        # exceeded; the rejection is logged by _on_rejected.
        ae.maximum_associations = cfg.max_conns
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
            raise ListenError(_listen_message(cfg.bind, cfg.port, exc)) from exc
        assert server is not None  # block=False always returns the server
        self._server = server
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
        active = list(server.active_associations)
        if active:
            log.warning("aborting %d active association(s)", len(active))
            for assoc in active:
                assoc.abort()
            deadline = time.monotonic() + _STOP_JOIN_SECONDS
            for assoc in active:
                assoc.join(max(0.0, deadline - time.monotonic()))

    def summary_lines(self) -> list[str]:
        return self.stats.summary_lines()

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
            return
        self.stats.association_rejected()
        log.info(
            "rejected association from %s: permanent, service user, no reason given "
            "(fault injection: --refuse)",
            _peer(event.assoc),
        )
        # pynetdicom skips negotiation when is_rejected is set after EVT_REQUESTED. kill()
        # then waits (as pynetdicom's own rejection path does) until the DUL is idle,
        # i.e. the peer has read the A-ASSOCIATE-RJ and closed, or the ARTIM timer ran
        # out: closing the socket at once would make the peer see an abort instead.
        event.assoc.acse.send_reject(0x01, 0x01, 0x01)
        event.assoc.kill()

    def _on_established(self, event: evt.Event) -> None:
        assoc = event.assoc
        self.stats.association_accepted()
        rejected = assoc.rejected_contexts
        log.info(
            "association from %s accepted: %d presentation context(s) accepted, %d rejected",
            _peer(assoc),
            len(assoc.accepted_contexts),
            len(rejected),
        )
        for cx in rejected:
            self.stats.context_rejected()
            log.info(
                "rejected presentation context %s (%s) from %s: %s",
                sop_name(str(cx.abstract_syntax)),
                cx.abstract_syntax,
                _peer(assoc),
                _CONTEXT_RESULTS.get(cx.result or 0, f"result {cx.result}"),
            )

    def _on_rejected(self, event: evt.Event) -> None:
        self.stats.association_rejected()
        rj = event.assoc.acceptor.primitive
        result = getattr(rj, "result", None)
        source = getattr(rj, "result_source", None)
        reason = getattr(rj, "diagnostic", None)
        if (result, source, reason) == (2, 3, 2):
            log.warning(
                "rejected association from %s: transient, local limit exceeded "
                "(--max-conns %d associations already active)",
                _peer(event.assoc),
                self.config.max_conns,
            )
        else:
            log.warning(
                "rejected association from %s: result %s, source %s, reason %s",
                _peer(event.assoc),
                result,
                source,
                reason,
            )

    def _on_aborted(self, event: evt.Event) -> None:
        log.info("association from %s aborted", _peer(event.assoc))

    # -- DIMSE services -----------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        self.stats.echo()
        log.info("C-ECHO from %s: Success", _peer(event.assoc))
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
                    _peer(assoc),
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
                    _peer(assoc),
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
            log.exception("C-STORE #%d from %s: handler error", decision.number, _peer(assoc))
            _remove_spool(request)
            raise
        finally:
            if self.config.faults.response_delay > 0 and decision.action is not Action.ABORT:
                time.sleep(self.config.faults.response_delay)

    def _store(self, event: evt.Event, sop_class: str, number: int, started: float) -> int:
        peer = _peer(event.assoc)
        name = sop_name(sop_class)
        source: Path = event.dataset_path
        try:
            header = inspect_file(str(source))
        except SourceError as exc:
            return self._refused(number, peer, name, f"unreadable dataset: {exc}")
        requested_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        if header.sop_instance_uid != requested_uid:
            return self._refused(
                number,
                peer,
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
            return self._refused(number, peer, name, str(exc))
        except OSError as exc:
            self.stats.store_failed(fault=False)
            log.error(
                "C-STORE #%d from %s: %s not stored, write failed: %s (0x%04X)",
                number,
                peer,
                name,
                exc.strerror or exc,
                STATUS_OUT_OF_RESOURCES,
            )
            return STATUS_OUT_OF_RESOURCES
        self.stats.store_succeeded()
        log.info(
            "C-STORE #%d from %s: %s stored as %s%s (%.1f MB, %s, %.1f ms)",
            number,
            peer,
            name,
            rel,
            " (replaced an existing file)" if replaced else "",
            final.stat().st_size / 1e6,
            UID(str(event.context.transfer_syntax)).name,
            (time.perf_counter() - started) * 1000,
        )
        return STATUS_SUCCESS

    def _refused(self, number: int, peer: str, name: str, why: str) -> int:
        self.stats.store_failed(fault=False)
        log.warning(
            "C-STORE #%d from %s: %s refused, %s (0x%04X)",
            number,
            peer,
            name,
            why,
            STATUS_CANNOT_UNDERSTAND,
        )
        return STATUS_CANNOT_UNDERSTAND


#: The largest PDU read when our maximum PDU is small: A-ASSOCIATE-RQs (128 contexts, user
#: identity tokens) stay far below it, and so does a P-DATA-TF of a peer that overshoots
#: our limit a little.
_MIN_PDU_READ_LIMIT = 1024 * 1024


def _bound_pdu_reads(assoc: Association, max_pdu: int) -> None:
    """Drop a peer that declares a PDU far larger than our maximum PDU length.

    pynetdicom reads a whole PDU into memory before looking at it, whatever length its
    header declares: a peer declaring 4 GB and sending it would take 4 GB of RAM per
    association. With a maximum PDU set (the default, 16 KiB), a PDU longer than
    ``max(2 x max PDU, 1 MiB)`` is refused: the read returns nothing, which pynetdicom
    treats as a connection closed mid-PDU (the association ends, A-P-ABORT). With
    ``--max-pdu 0`` (unlimited) there is no bound.
    """
    if not max_pdu:
        return
    limit = max(2 * max_pdu, _MIN_PDU_READ_LIMIT)
    sock = assoc.dul.socket
    if sock is None:
        return
    recv = sock.recv

    def bounded_recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            log.warning(
                "association from %s dropped: it announced a PDU of %d bytes (our maximum "
                "PDU is %d)",
                _peer(assoc),
                nr_bytes,
                max_pdu,
            )
            return bytearray()
        return recv(nr_bytes)

    sock.recv = bounded_recv  # type: ignore[method-assign]


def _guard_dimse_decoding(assoc: Association) -> None:
    """Abort the association, instead of killing its DUL thread, on an undecodable message.

    pynetdicom decodes P-DATA in the DUL thread and catches only some decoding errors: a
    command set without Command Field, or a C-STORE without Affected SOP Instance UID
    (which it cannot spool), raised out of the thread, which then died. The peer got no
    answer, only a closed socket, and the traceback went to stderr. Such a message is
    now handled as pynetdicom handles the errors it does catch: Evt19 (invalid PDU), which
    answers A-ABORT (service provider) and ends the association.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_or_abort(primitive: Any) -> None:
        try:
            receive(primitive)
        except Exception as exc:
            log.warning(
                "association from %s aborted: undecodable DIMSE message (%s)",
                _peer(assoc),
                str(exc)[:200],
            )
            if dimse.message is not None:
                _remove_spool(dimse.message)
                dimse.message = None
            assoc.dul.event_queue.put("Evt19")

    dimse.receive_primitive = receive_or_abort  # type: ignore[method-assign]


def _remove_spool(message: Any) -> None:
    """Close and delete the temporary file pynetdicom spooled a dataset into, if any."""
    spool = getattr(message, "_dataset_file", None) or getattr(message, "_data_set_file", None)
    if spool is None:
        return
    with contextlib.suppress(OSError):
        spool.close()
    with contextlib.suppress(OSError):
        os.unlink(spool.name)


def _discard_spooled(assoc: Association) -> None:
    """Delete the spool files of C-STOREs an ended association never handed to us.

    pynetdicom spools each incoming dataset to $TMPDIR and deletes the file after the
    C-STORE handler; a dataset cut off by an abort or a dropped connection, or complete
    but still queued when the association ended, is never handled and its file stayed:
    a peer could fill the disk by aborting in the middle of large datasets. Runs in the
    association's thread after its reactor and its DUL have stopped.
    """
    dimse = getattr(assoc, "dimse", None)
    if dimse is None:
        return
    partial = getattr(dimse, "message", None)
    if partial is not None:
        _remove_spool(partial)
    pending = getattr(dimse, "msg_queue", None)
    while pending is not None:
        try:
            _, primitive = pending.get_nowait()
        except queue.Empty:
            break
        _remove_spool(primitive)


def _listen_message(host: str, port: int, exc: OSError) -> str:
    import errno

    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use (another process has the port)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: address not available on this host"
    return f"cannot listen on {where}: {exc.strerror or exc}"
