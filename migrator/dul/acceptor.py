"""A synchronous association acceptor: one thread runs one association, no reactor.

``serve(sock, address, handler, settings)`` runs an accepted connection to its end: it reads
the A-ASSOCIATE-RQ (by ``settings.handshake_deadline``), negotiates the presentation contexts
against ``settings.policy``, lets the handler admit or reject the association, then answers
C-ECHO and C-STORE requests until the peer releases or aborts, or a timer runs out.

A C-STORE's dataset is never held whole: its PDVs are handed to the handler's
``StoreSink`` in pieces as they arrive (``migrator.dul.reader``); the sink's ``finish``
decides the status of the C-STORE-RSP. Used by ``migrator scp`` (``migrator.scp.server``),
and meant for any other receiving side (a C-MOVE destination).

Every way an association ends is reported once to ``handler.ended`` with an ``End`` and a
text that names no patient data (UIDs and AE titles only).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import NoReturn

from migrator.dul import dimse
from migrator.dul.acse import (
    REJECT_APPLICATION_CONTEXT,
    REJECT_CALLING_AE,
    REJECT_PROTOCOL_VERSION,
    AcceptedContext,
    AssociateRQ,
    ContextPolicy,
    MalformedPDU,
    decode_associate_rq,
    encode_associate_ac,
    encode_associate_rj,
    negotiate,
)
from migrator.dul.handling import (
    BY_HANDLER,
    AbortAssociation,
    Accepted,
    End,
    Handler,
    StoreOutcome,
    StoreRequest,
    StoreSink,
)
from migrator.dul.pdu import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    APPLICATION_CONTEXT,
    P_DATA_TF,
    PDV_HEADER,
    RELEASE_RP,
    abort_text,
    encode_abort,
)
from migrator.dul.reader import HandshakeExpired, Idle, PduReader, PeerClosed, Stalled
from migrator.dul.wire import (
    FRAGMENT_HEADER,
    PDV_OVERHEAD,
    UNLIMITED_FRAGMENT,
    append_fragments,
    ssl_errors,
)
from migrator.netutil import set_nodelay
from migrator.validation import is_valid_ae, is_valid_uid

#: Non-P-DATA PDUs (A-ASSOCIATE-RQ with 128 contexts and user identity included) stay far
#: below this; so does a P-DATA-TF of a peer that overshoots our maximum a little.
MIN_PDU_LIMIT = 1024 * 1024
#: A command set is a few hundred bytes (PS3.7 §E); more is no command.
MAX_COMMAND = 64 * 1024
#: How long a peer gets to read our last PDU (A-ASSOCIATE-RJ, A-ABORT) and close first.
LINGER = 1.0
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))


@dataclass
class Settings:
    policy: ContextPolicy
    max_pdu: int = 16384
    #: monotonic time by which the A-ASSOCIATE-RQ must be in (TLS handshake included)
    handshake_deadline: float = 0.0
    #: a read inside a PDU may wait this long
    stall_timeout: float = 60.0
    #: an association may go this long without a PDU
    idle_timeout: float = 30.0

    @property
    def pdu_limit(self) -> int | None:
        """The longest P-DATA-TF read: None (unlimited) with a maximum PDU of 0."""
        return max(2 * self.max_pdu, MIN_PDU_LIMIT) if self.max_pdu else None


class _Drop(Exception):
    """End the connection: (how, why, bytes to send first, linger for the peer to close)."""

    def __init__(self, how: End, why: str, last: bytes = b"", linger: bool = False) -> None:
        super().__init__(why)
        self.how, self.why, self.last, self.linger = how, why, last, linger


def _abort_pdu(reason: int) -> bytes:
    return encode_abort(2, reason)  # source 2: service provider (PS3.8 §9.3.8)


def serve(assoc: Accepted, handler: Handler, cfg: Settings) -> None:
    """Run the association on ``assoc.sock`` (accepted, TLS done) to its end; closes it."""
    sock = assoc.sock
    with contextlib.suppress(OSError):
        set_nodelay(sock)
    how, why = End.CLOSED, ""
    #: what to send before closing, and whether to linger for the peer to close first
    last: tuple[bytes, bool] | None = None
    try:
        reader = PduReader(sock, idle=cfg.stall_timeout, stall=cfg.stall_timeout)
        reader.deadline = cfg.handshake_deadline
        _Association(assoc, reader, handler, cfg).run()  # ends by raising (_Drop: released...)
    except _Drop as drop:
        how, why = drop.how, drop.why
        last = (drop.last, drop.linger)
    except HandshakeExpired:
        how, why = End.HANDSHAKE, "no association request in time"
    except Idle:
        how, why = End.IDLE, "idle"
        last = (_abort_pdu(0), False)
    except Stalled:
        how, why = End.STALLED, "no data in the middle of a PDU"
    except PeerClosed:
        how, why = End.CLOSED, "the peer closed the connection"
    except ssl_errors() as exc:
        how, why = End.CLOSED, f"TLS error: {exc}"
    except BlockingIOError:  # SO_SNDTIMEO (migrator.dul.reader): our answer was not read
        how, why = End.CLOSED, f"the peer read nothing of our answer for {cfg.stall_timeout:g} s"
    except OSError as exc:
        how, why = End.CLOSED, str(exc.strerror or exc)
    finally:
        # The handler hears of the end (its connection slot freed) before the peer can: a
        # peer that connects again as soon as it reads our A-RELEASE-RP, A-ABORT or the
        # close must find its slot free (--max-conns 1: seen rejected as "too many").
        assoc.ended = True
        try:
            handler.ended(assoc, how, why)
        finally:
            if last is not None:
                _close_with(sock, *last)
            with contextlib.suppress(OSError):
                sock.close()


def _close_with(sock: socket.socket, last: bytes, linger: bool) -> None:
    """Send ``last``; with ``linger``, let the peer read it and close first (closing with
    its bytes unread would reset the connection, and a reset can destroy our last PDU
    before the peer reads it)."""
    try:
        if last:
            sock.settimeout(LINGER)
            sock.sendall(last)
        if linger:
            socket.socket.shutdown(sock, socket.SHUT_WR)
            deadline = time.monotonic() + LINGER
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(65536):
                    break
    except (OSError, ValueError):
        pass


class _Association:
    def __init__(self, assoc: Accepted, reader: PduReader, handler: Handler, cfg: Settings):
        self.assoc = assoc
        self.reader = reader
        self.handler = handler
        self.cfg = cfg
        self.command = bytearray()
        self.command_ctx = 0
        #: the C-STORE whose dataset is arriving: (request, sink)
        self.store: tuple[StoreRequest, StoreSink] | None = None
        self.fragment = UNLIMITED_FRAGMENT
        self.pdu_limit = cfg.pdu_limit

    # -- PDUs -----------------------------------------------------------------------------

    def _header(self) -> tuple[int, int]:
        pdu_type, length = self.reader.header()
        if pdu_type not in _KNOWN_PDU_TYPES:
            raise _Drop(
                End.PROTOCOL,
                f"unknown PDU type 0x{pdu_type:02X} (answered A-ABORT, unrecognized PDU)",
                _abort_pdu(1),
            )
        limit = self.pdu_limit if pdu_type == P_DATA_TF else MIN_PDU_LIMIT
        if limit is not None and length > limit:
            # Closed with the rest unread: the peer sees a reset, and we read nothing more.
            raise _Drop(
                End.PROTOCOL,
                f"it announced a PDU of {length} bytes (our maximum PDU is {self.cfg.max_pdu})",
            )
        return pdu_type, length

    def run(self) -> NoReturn:
        try:
            self._associate()
            self.reader.idle = self.cfg.idle_timeout
            reader, limit = self.reader, self.pdu_limit
            while True:
                body = reader.p_data(limit)  # a whole P-DATA-TF in memory: no more checks
                if body is not None:
                    self._p_data_in(body)
                    continue
                pdu_type, length = self._header()
                if pdu_type == P_DATA_TF:
                    self._p_data(length)
                elif pdu_type == A_RELEASE_RQ:
                    self.reader.skip(length)
                    self._discard()
                    # A-RELEASE-RP sent by serve() once the handler has heard of the end.
                    raise _Drop(End.RELEASED, "released", RELEASE_RP)
                elif pdu_type == A_ABORT:
                    raw = bytes(self.reader.take(length)) if length <= 64 else b""
                    reason = abort_text(raw[2], raw[3]) if len(raw) >= 4 else "A-ABORT"
                    raise _Drop(End.PEER_ABORTED, reason)
                else:
                    raise _Drop(
                        End.PROTOCOL,
                        f"unexpected PDU type 0x{pdu_type:02X} in an association "
                        "(answered A-ABORT)",
                        _abort_pdu(2),
                        linger=True,
                    )
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        if self.store is not None:
            _, sink = self.store
            self.store = None
            sink.discard()

    def _associate(self) -> None:
        pdu_type, length = self._header()
        if pdu_type != A_ASSOCIATE_RQ:
            if pdu_type == A_ABORT:
                raise _Drop(End.PEER_ABORTED, "A-ABORT before any association request")
            raise _Drop(
                End.PROTOCOL,
                f"PDU type 0x{pdu_type:02X} before any association request (answered A-ABORT)",
                _abort_pdu(2),
                linger=True,
            )
        body = bytes(self.reader.take(length))
        self.reader.deadline = None
        try:
            rq = decode_associate_rq(body)
        except MalformedPDU as exc:
            raise _Drop(End.PROTOCOL, f"{exc} (answered A-ABORT)", _abort_pdu(6), True) from None
        assoc = self.assoc
        assoc.calling_ae = rq.calling_ae if is_valid_ae(rq.calling_ae) else ""
        assoc.called_ae = rq.called_ae
        assoc.peer_max_pdu = rq.user.max_pdu
        checked = self._check(rq)
        if checked is not None:  # the handler never sees an unusable request
            reject, why = checked
            raise _Drop(End.REJECTED, why, encode_associate_rj(*reject), linger=True)
        refusal = self.handler.admit(assoc, rq)
        if refusal is not None:
            raise _Drop(End.REJECTED, BY_HANDLER, encode_associate_rj(*refusal), linger=True)
        assoc.contexts, assoc.results = negotiate(rq, self.cfg.policy)
        limit = rq.user.max_pdu - PDV_OVERHEAD if rq.user.max_pdu else UNLIMITED_FRAGMENT
        # Even: see Association.__init__ (a peer with an odd maximum must get even PDVs)
        self.fragment = max(2, min(limit, UNLIMITED_FRAGMENT) & ~1)
        assoc.sock.sendall(encode_associate_ac(rq, assoc.results, self.cfg.max_pdu))
        assoc.established = True
        self.handler.established(assoc)

    def _check(self, rq: AssociateRQ) -> tuple[tuple[int, int, int], str] | None:
        """A request we refuse before the handler sees it: (A-ASSOCIATE-RJ, why)."""
        if not rq.protocol_version & 1:  # bit 0: version 1 (PS3.8 §9.3.2)
            return REJECT_PROTOCOL_VERSION, "protocol version not supported"
        if rq.application_context != APPLICATION_CONTEXT:
            return REJECT_APPLICATION_CONTEXT, "application context name not supported"
        if not self.assoc.calling_ae:
            return REJECT_CALLING_AE, "calling AE title is not a valid AE title"
        return None

    # -- P-DATA ---------------------------------------------------------------------------

    def _protocol(self, why: str) -> _Drop:
        return _Drop(End.PROTOCOL, f"{why} (answered A-ABORT)", _abort_pdu(6), linger=True)

    def _p_data(self, length: int) -> None:
        body = self.reader.view(length)
        if body is not None:  # the usual case: the whole PDU is in already
            self._p_data_in(body)
            return
        reader = self.reader
        left = length
        while left > 0:
            if left < PDV_HEADER.size:
                raise self._protocol(f"a P-DATA-TF ends inside a PDV header ({left} bytes)")
            item_length, ctx_id, control = PDV_HEADER.unpack(reader.take(PDV_HEADER.size))
            left -= PDV_HEADER.size
            size = item_length - 2
            if size < 0 or size > left:
                raise self._protocol(f"a PDV of {item_length} bytes in a PDU of {length}")
            left -= size
            context = self.assoc.contexts.get(ctx_id)
            if context is None:
                raise self._protocol(f"a PDV on presentation context {ctx_id}, not accepted")
            if control & 0x01:
                self._command_piece(context, reader.take(size) if size <= MAX_COMMAND else None)
                if control & 0x02:
                    self._command_done(context)
            else:
                self._dataset_piece(context, size, bool(control & 0x02))

    def _p_data_in(self, body: memoryview) -> None:
        """``_p_data`` for a PDU read whole: its PDVs taken from memory, with the same
        checks, each dataset piece handed on as it lies in the receive buffer."""
        length, pos = len(body), 0
        contexts = self.assoc.contexts
        while pos < length:
            if length - pos < PDV_HEADER.size:
                raise self._protocol(f"a P-DATA-TF ends inside a PDV header ({length - pos} bytes)")
            item_length, ctx_id, control = PDV_HEADER.unpack_from(body, pos)
            pos += PDV_HEADER.size
            size = item_length - 2
            if size < 0 or size > length - pos:
                raise self._protocol(f"a PDV of {item_length} bytes in a PDU of {length}")
            context = contexts.get(ctx_id)
            if context is None:
                raise self._protocol(f"a PDV on presentation context {ctx_id}, not accepted")
            data = body[pos : pos + size]
            pos += size
            if control & 0x01:
                self._command_piece(context, data if size <= MAX_COMMAND else None)
                if control & 0x02:
                    self._command_done(context)
            else:
                self._dataset_in(context, data, bool(control & 0x02))

    def _command_piece(self, context: AcceptedContext, data: memoryview | None) -> None:
        if self.store is not None:
            raise self._protocol("a command before the previous C-STORE's dataset ended")
        if self.command and context.context_id != self.command_ctx:
            raise self._protocol("a command continued on another presentation context")
        if data is None or len(self.command) + len(data) > MAX_COMMAND:
            raise self._protocol(f"a command set longer than {MAX_COMMAND} bytes")
        self.command_ctx = context.context_id
        self.command += data

    def _command_done(self, context: AcceptedContext) -> None:
        fields = dimse.decode_command(bytes(self.command))
        self.command.clear()
        command = fields.get(dimse.COMMAND_FIELD)
        message_id = fields.get(dimse.MESSAGE_ID)
        has_data = fields.get(dimse.COMMAND_DATA_SET_TYPE, dimse.NO_DATASET) != dimse.NO_DATASET
        if not isinstance(message_id, int):
            raise self._protocol("a command without a Message ID")
        if command == dimse.C_ECHO_RQ and not has_data:
            status = self.handler.echo(self.assoc)
            self._respond(context, dimse.c_echo_rsp(message_id, status))
            return
        if command != dimse.C_STORE_RQ or not has_data:
            raise self._protocol(f"an unsupported DIMSE command {command!r}")
        sop_class = str(fields.get(dimse.AFFECTED_SOP_CLASS, ""))
        sop_instance = str(fields.get(dimse.AFFECTED_SOP_INSTANCE, ""))
        originator_id = fields.get(dimse.MOVE_ORIGINATOR_MESSAGE_ID)
        request = StoreRequest(
            message_id,
            sop_class,
            sop_instance,
            context,
            str(fields.get(dimse.MOVE_ORIGINATOR_AE, "")),
            originator_id if isinstance(originator_id, int) else None,
        )
        self.store = (request, self._sink(request))

    def _sink(self, request: StoreRequest) -> StoreSink:
        try:
            return self.handler.store(self.assoc, request)
        except AbortAssociation as exc:
            raise _Drop(End.ABORTED, str(exc), encode_abort(0, 0), linger=True) from None

    def _dataset_piece(self, context: AcceptedContext, size: int, last: bool) -> None:
        """A dataset PDV of ``size`` bytes, read from the socket as it comes."""
        if self.store is None or self.store[0].context.context_id != context.context_id:
            raise self._protocol("a dataset without a C-STORE request on its context")
        request, sink = self.store
        for piece in self.reader.pieces(size):
            sink.write(piece)
        if last:
            self._dataset_done(context, request, sink)

    def _dataset_in(self, context: AcceptedContext, data: memoryview, last: bool) -> None:
        """A dataset PDV already in memory."""
        store = self.store
        if store is None or store[0].context.context_id != context.context_id:
            raise self._protocol("a dataset without a C-STORE request on its context")
        store[1].write(data)
        if last:
            self._dataset_done(context, *store)

    def _dataset_done(
        self, context: AcceptedContext, request: StoreRequest, sink: StoreSink
    ) -> None:
        self.store = None
        try:
            outcome = sink.finish()
        except AbortAssociation as exc:
            raise _Drop(End.ABORTED, str(exc), encode_abort(0, 0), linger=True) from None
        try:
            self._respond(
                context,
                dimse.c_store_rsp(
                    request.message_id,
                    _echoed(request.sop_class),
                    _echoed(request.sop_instance),
                    outcome.status,
                    outcome.comment,
                ),
            )
        finally:  # also when the peer is gone: the instance is stored all the same
            if outcome.then is not None:
                outcome.then()

    def _respond(self, context: AcceptedContext, command: bytes) -> None:
        if len(command) <= self.fragment:  # the usual case: one PDU
            flags = 0x03  # a command, its last fragment
            header = FRAGMENT_HEADER.pack(
                P_DATA_TF, len(command) + PDV_OVERHEAD, len(command) + 2, context.context_id, flags
            )
            self.assoc.sock.sendall(header + command)
            return
        bufs: list[bytes | memoryview] = []
        append_fragments(
            bufs, context.context_id, memoryview(command), self.fragment, command=True, final=True
        )
        self.assoc.sock.sendall(b"".join(bufs))


def _echoed(uid: str) -> str:
    """A UID fit to go back in a response: as received when valid, else left out."""
    return uid if is_valid_uid(uid) else ""


__all__ = [
    "BY_HANDLER",
    "AbortAssociation",
    "Accepted",
    "End",
    "Handler",
    "Settings",
    "StoreOutcome",
    "StoreRequest",
    "StoreSink",
    "serve",
]
