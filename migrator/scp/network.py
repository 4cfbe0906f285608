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
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

log = logging.getLogger("migrator.scp")


def peer(assoc: Association) -> str:
    req = assoc.requestor
    return f"{req.ae_title.strip() or '?'}@{req.address}:{req.port}"


class ScpServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with two changes for hostile or broken peers.

    * Every accepted socket gets a timeout (``ScpConfig.io_timeout``). pynetdicom reads a
      whole PDU in blocking ``recv`` calls on a socket without one, and checks its timers
      only between PDUs: a peer that stops in the middle of a PDU held the association
      thread (and a ``--max-conns`` slot) forever.
    * The TLS handshake runs in the connection's own thread. pynetdicom performs it in
      ``get_request``, i.e. in the one thread that accepts connections: a single client
      that connected and never spoke TLS blocked every later connection.
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


class ScpRequestHandler(RequestHandler):
    """pynetdicom's handler (``handle`` as in pynetdicom 3.0), plus a last word for each
    association, run by its own thread once everything else in it has stopped."""

    server: ScpServer

    def handle(self) -> None:
        assoc = self._create_association()
        guard_dimse_decoding(assoc)
        bound_pdu_reads(assoc, self.server.ae.maximum_pdu_size)
        run = assoc.run

        def run_then_clean_up() -> None:
            try:
                run()
            finally:
                self.server.ae.on_association_end(assoc)

        assoc.run = run_then_clean_up  # type: ignore[method-assign]
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class ScpAE(AE):
    """An AE whose servers are ``ScpServer``s with ``ScpRequestHandler``s."""

    io_timeout: float = 60.0
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


def bound_pdu_reads(assoc: Association, max_pdu: int) -> None:
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
                peer(assoc),
                nr_bytes,
                max_pdu,
            )
            return bytearray()
        return recv(nr_bytes)

    sock.recv = bounded_recv  # type: ignore[method-assign]


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
