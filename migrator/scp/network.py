"""The network side of `migrator scp`: pynetdicom's server, hardened against broken peers.

``ScpServer``/``ScpRequestHandler``/``ScpAE`` are pynetdicom's threaded server, request
handler and AE with our changes (socket timeouts, the TLS handshake in the connection's own
thread, a last word for each association); the functions below guard the PDU and DIMSE
decoding of one association and clean up what pynetdicom spooled for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from migrator.errors import MigratorError
from migrator.scp.guards import ConnectionGuard, peer

log = logging.getLogger("migrator.scp")


class ScpServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with these changes for hostile or broken peers.

    * Every accepted socket gets a timeout (``ScpConfig.io_timeout``). pynetdicom reads a
      whole PDU in blocking ``recv`` calls on a socket without one, and checks its timers
      only between PDUs: a peer that stops in the middle of a PDU held the association
      thread (and a ``--max-conns`` slot) forever.
    * The TLS handshake runs in the connection's own thread. pynetdicom performs it in
      ``get_request``, i.e. in the one thread that accepts connections: a single client
      that connected and never spoke TLS blocked every later connection.
    * Every connection is registered with the AE's ``ConnectionGuard`` at accept (which
      may close it at once: too many pending from its address) and released when it ends.
    * A request that fails is one log line, not socketserver's traceback on stderr.
    """

    ae: ScpAE

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.ae.io_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        if self.ae.guard is not None and self.ae.guard.accept(client, address) is None:
            with contextlib.suppress(OSError):
                client.close()
            # socketserver drops a request whose get_request raised OSError
            raise ConnectionRefusedError("closed at accept")
        return client, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        guard = self.ae.guard
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError) as exc:
                expired = guard is not None and guard.expired(request)
                if guard is not None:
                    guard.close(sock=request)
                if expired:  # the watchdog closed it, and said so
                    with contextlib.suppress(OSError):
                        request.close()
                    return
                self.ae.on_tls_failure(client_address, exc)
                if _client_speaks_tls(exc):
                    _close_after_alert(request)
                else:
                    with contextlib.suppress(OSError):
                        request.close()
                return
        super().process_request_thread(request, client_address)

    def handle_error(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        exc = sys.exc_info()[1]
        where = (
            f"{client_address[0]}:{client_address[1]}"
            if isinstance(client_address, tuple)
            else str(client_address)
        )
        if isinstance(exc, OSError):
            log.warning("connection from %s dropped: %s", where, exc)
        else:  # a bug of ours: the traceback is wanted
            log.error("connection from %s: request handler failed", where, exc_info=True)
        if self.ae.guard is not None and isinstance(request, socket.socket):
            self.ae.guard.close(sock=request)


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


class ScpRequestHandler(RequestHandler):
    """pynetdicom's handler (``handle`` as in pynetdicom 3.0), plus a last word for each
    association, run by its own thread once everything else in it has stopped."""

    server: ScpServer

    def handle(self) -> None:
        ae = self.server.ae
        assoc = self._create_association()
        if ae.guard is not None and isinstance(self.request, socket.socket):
            ae.guard.attach(self.request, assoc)
        guard_dimse_decoding(assoc)
        guard_state_machine(assoc)
        guard_pdu_reads(assoc, ae.maximum_pdu_size, ae.io_timeout, ae.guard)
        run = assoc.run
        request = self.request

        def run_then_clean_up() -> None:
            try:
                run()
            finally:
                try:
                    ae.on_association_end(assoc)
                finally:
                    if ae.guard is not None:
                        ae.guard.close(
                            sock=request if isinstance(request, socket.socket) else None,
                            assoc=assoc,
                        )

        assoc.run = run_then_clean_up  # type: ignore[method-assign]
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class ScpAE(AE):
    """An AE whose servers are ``ScpServer``s with ``ScpRequestHandler``s."""

    io_timeout: float = 60.0
    #: Book-keeping and limits of connections (None: pynetdicom's own behaviour)
    guard: ConnectionGuard | None = None
    #: Called with (peer address, exception) when a TLS handshake fails
    on_tls_failure: Callable[[Any, BaseException], None] = staticmethod(lambda a, e: None)
    #: Called with the association when its thread ends
    on_association_end: Callable[[Association], None] = staticmethod(lambda a: None)

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_class"] = ScpServer
        kwargs["request_handler"] = ScpRequestHandler
        return super().make_server(*args, **kwargs)


#: The largest PDU read when our maximum PDU is small: A-ASSOCIATE-RQs (128 contexts, user
#: identity tokens) stay far below it, and so does a P-DATA-TF of a peer that overshoots
#: our limit a little.
_MIN_PDU_READ_LIMIT = 1024 * 1024


#: PDU types of PS3.8 §9.3 (A-ASSOCIATE-RQ ... A-ABORT).
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
#: A-ABORT, source 2 (service provider), reason 1 (unrecognized PDU), PS3.8 §9.3.8.
_ABORT_UNRECOGNIZED_PDU = bytes.fromhex("07000000000400000201")


def guard_pdu_reads(
    assoc: Association, max_pdu: int, io_timeout: float, guard: ConnectionGuard | None
) -> None:
    """Wrap the association's PDU reads: the first line of defence against a broken peer.

    pynetdicom reads a PDU as a 6-byte header, then its body, in blocking ``recv`` calls
    on the socket (timeout ``io_timeout``), and catches what goes wrong with a traceback
    in the log. Here, for each read:

    * a PDU type outside 1..7: the peer gets an A-ABORT (unrecognized PDU) and the
      connection is shut down at once. pynetdicom logged it, sent an A-ABORT and then
      waited for the peer to close (it read the unknown PDU's body as the next header and
      stalled there): the slot stayed taken for ``io_timeout`` seconds, and the log got a
      traceback;
    * a PDU declared far larger than our maximum PDU length: dropped after its header.
      pynetdicom reads a whole PDU into memory, whatever length it declares: a peer
      declaring 4 GB and sending it would take 4 GB of RAM per association. With a maximum
      PDU set (the default, 16 KiB), a PDU longer than ``max(2 x max PDU, 1 MiB)`` is
      refused; with ``--max-pdu 0`` (unlimited) there is no bound;
    * a read that fails (timeout in the middle of a PDU, connection reset): one warning
      line, and the read returns what it has, which pynetdicom treats as a connection
      closed (the association ends, A-P-ABORT), instead of an exception and its traceback.

    A read that returns nothing is how pynetdicom learns that the connection is gone.
    Nothing is logged twice for one connection (``guard.report``); a connection the
    watchdog shut down was reported by it.
    """
    sock = assoc.dul.socket
    if sock is None:
        return
    limit = max(2 * max_pdu, _MIN_PDU_READ_LIMIT) if max_pdu else None
    recv = sock.recv
    expect_header = True

    def warn(message: str, *args: Any) -> None:
        if guard is None or guard.report(assoc):
            log.warning("association from %s dropped: " + message, peer(assoc), *args)

    def guarded_recv(nr_bytes: int) -> bytearray:
        nonlocal expect_header
        header = expect_header
        if not header and limit is not None and nr_bytes > limit:
            expect_header = True
            warn("it announced a PDU of %d bytes (our maximum PDU is %d)", nr_bytes, max_pdu)
            return bytearray()
        try:
            data = recv(nr_bytes)
        except TimeoutError:
            warn("no data for %g s in the middle of a PDU (--io-timeout)", io_timeout)
            return bytearray()
        except OSError as exc:
            warn("%s", exc.strerror or exc)
            return bytearray()
        if not header:
            expect_header = True
        elif len(data) == 6:
            if data[0] not in _KNOWN_PDU_TYPES:
                warn("unknown PDU type 0x%02X (answered A-ABORT, unrecognized PDU)", data[0])
                _abort_now(sock)
                return bytearray()
            expect_header = False
        return data

    sock.recv = guarded_recv  # type: ignore[method-assign]


def _abort_now(sock: Any) -> None:
    """Send an A-ABORT (unrecognized PDU) and shut the connection down."""
    raw = getattr(sock, "socket", None)
    if raw is None:
        return
    with contextlib.suppress(OSError, ValueError):
        raw.sendall(_ABORT_UNRECOGNIZED_PDU)
    with contextlib.suppress(OSError):
        socket.socket.shutdown(raw, socket.SHUT_RDWR)


def guard_dimse_decoding(assoc: Association) -> None:
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
                peer(assoc),
                str(exc)[:200],
            )
            if dimse.message is not None:
                remove_spool(dimse.message)
                dimse.message = None
            assoc.dul.event_queue.put("Evt19")

    dimse.receive_primitive = receive_or_abort  # type: ignore[method-assign]


def guard_state_machine(assoc: Association) -> None:
    """End the association, instead of killing its DUL thread, when an action of
    pynetdicom's state machine raises on what the peer sent.

    Example: an A-ABORT whose source or reason is no valid value (PS3.8 §9.3.8): AA-3
    turns it into a primitive, whose setter raises ValueError; pynetdicom logs it (one
    warning line through ``PeerErrorFilter``) and re-raises out of its reactor, whose
    thread then died with a traceback on stderr. The connection is now shut down and both
    reactors stopped, as pynetdicom does itself for a fatal error, so the association
    thread ends and its slot is free.
    """
    dul = assoc.dul
    machine = dul.state_machine
    do_action = machine.do_action

    def do_action_or_end(event: str) -> None:
        try:
            do_action(event)
        except Exception:
            assoc.is_aborted = True
            assoc.is_established = False
            assoc._kill = True
            dul._kill_thread = True
            raw = getattr(dul.socket, "socket", None)
            if raw is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(raw, socket.SHUT_RDWR)

    machine.do_action = do_action_or_end  # type: ignore[method-assign]


def remove_spool(message: Any) -> None:
    """Close and delete the temporary file pynetdicom spooled a dataset into, if any."""
    spool = getattr(message, "_dataset_file", None) or getattr(message, "_data_set_file", None)
    if spool is None:
        return
    with contextlib.suppress(OSError):
        spool.close()
    with contextlib.suppress(OSError):
        os.unlink(spool.name)


def discard_spooled(assoc: Association) -> None:
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
        remove_spool(partial)
    pending = getattr(dimse, "msg_queue", None)
    while pending is not None:
        try:
            _, primitive = pending.get_nowait()
        except queue.Empty:
            break
        remove_spool(primitive)


class ListenError(MigratorError):
    """The receiver could not listen on the requested address and port."""


def listen_message(host: str, port: int, exc: OSError) -> str:
    import errno

    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use (another process has the port)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: address not available on this host"
    return f"cannot listen on {where}: {exc.strerror or exc}"
