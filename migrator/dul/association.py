"""A synchronous association requestor: one thread, one socket, no reactor.

Usage::

    assoc = Association.request(host, port, "PACS", "MIGRATOR", contexts, max_pdu=16384,
                                timeouts=Timeouts())
    ctx = assoc.context_for(sop_class, transfer_syntax)
    response = assoc.c_store(ctx, sop_class, sop_instance, FileSlice(path, offset, length))
    # or, to keep several associations busy from one thread:
    msg_id = assoc.send_c_store(ctx, sop_class, sop_instance, dataset)
    ...                                   # send on the other associations
    response = assoc.wait_c_store(msg_id)
    assoc.release()

With ``tls=`` (an ``ssl.SSLContext``, see ``migrator.dul.tls``) the socket is wrapped in TLS
after connecting. ``SSLSocket`` has no ``sendmsg``: on TLS associations the PDU buffers are
joined into writes of ~256 KiB (files are still read 1 MiB at a time); plain TCP keeps one
gathering ``sendmsg`` per ~1000 buffers.

Every failure that leaves the outcome of a C-STORE unknown (timeout, abort, reset, protocol
error) raises ``AssociationLost`` after aborting the association: the caller must discard it
and re-send on a new one (a repeated C-STORE of the same SOP Instance is safe).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from migrator.dul import dimse
from migrator.dul.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    RELEASE_RP,
    RELEASE_RQ,
    AssociateAC,
    ProposedContext,
    abort_text,
    decode_associate_ac,
    describe_negotiation,
    encode_abort,
    encode_associate_rq,
    reject_text,
)
from migrator.dul.tls import handshake_failure
from migrator.dul.wire import (
    FRAGMENT_HEADER,
    PDV_OVERHEAD,
    READ_BLOCK,
    UNLIMITED_FRAGMENT,
    append_fragments,
    is_tls,
    open_source,
    recv_pdu_raw,
    sendall_tls,
    sendfile_all,
    sendmsg_all,
    ssl_errors,
    tls_handshake,
)
from migrator.errors import AssociationLost, AssociationRejected, ConnectError, SourceError
from migrator.netutil import set_nodelay

if TYPE_CHECKING:
    import ssl

#: ``-vv``: the negotiation of every association (proposed/accepted contexts, peer limits).
log = logging.getLogger("migrator.dul")

_HAVE_SENDFILE = hasattr(os, "sendfile") and hasattr(socket, "MSG_MORE")
#: Datasets up to this size go out with os.sendfile, larger ones read-and-sendmsg. Measured
#: against DCMTK storescp on loopback (bench/RESULTS.md): sendfile halves the CPU per MB at
#: every size and is faster end to end for 0.5–5 MB files (3.1 vs 4.2 ms per 5 MB), but 60 MB
#: files arrive slower (~105 vs ~65 ms each) although the CPU is lower (17 vs 47 ms); the
#: cause was not found (not the send buffer size, not MSG_MORE). Sizes between: unmeasured.
_SENDFILE_MAX = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. ``connect``: TCP connect; ``acse``: waiting for A-ASSOCIATE/RELEASE answers;
    ``dimse``: waiting for a C-STORE/C-ECHO response; ``network``: any single socket write."""

    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0


@dataclass(frozen=True, slots=True)
class FileSlice:
    """Dataset bytes to stream from a file: ``head`` (from memory: a coerced file's rewritten
    elements), then ``length`` bytes of the file starting at ``offset``."""

    path: str
    offset: int
    length: int
    head: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    error_comment: str = ""


class Association:
    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        proposed: list[ProposedContext],
        ac: AssociateAC,
        timeouts: Timeouts,
    ) -> None:
        self._sock = sock
        # SSLSocket has no sendmsg(): TLS joins the buffers into a few large writes, plain
        # TCP keeps one gathering syscall per ~1000 buffers.
        self._send_bufs = sendall_tls if is_tls(sock) else sendmsg_all
        self.tls = is_tls(sock)
        self._rbuf = bytearray()
        self._timeouts = timeouts
        self._message_id = 0
        self._sent_at = 0.0
        self._alive = True
        self.peer = peer
        self.peer_max_pdu = ac.peer_max_pdu
        self.peer_implementation = ac.implementation_version or ac.implementation_class_uid
        limit = ac.peer_max_pdu - PDV_OVERHEAD if ac.peer_max_pdu else UNLIMITED_FRAGMENT
        # Even: DICOM streams are even-length, and a peer with an odd maximum (4309...)
        # must not get odd fragments of them (the last one would carry the pad byte alone).
        self._fragment = max(2, min(limit, UNLIMITED_FRAGMENT) & ~1)
        # (abstract syntax, transfer syntax) -> context id, for accepted contexts only
        self._accepted: dict[tuple[str, str], int] = {}
        self.rejected: dict[str, int] = {}
        for ctx in proposed:
            result, ts = ac.contexts.get(ctx.context_id, (2, ""))
            if result == 0 and ts:
                self._accepted.setdefault((ctx.abstract_syntax, ts), ctx.context_id)
            else:
                self.rejected.setdefault(ctx.abstract_syntax, result)

    # -- establishment -------------------------------------------------------------------

    @classmethod
    def request(
        cls,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        contexts: list[ProposedContext],
        *,
        max_pdu: int = 16384,
        timeouts: Timeouts | None = None,
        tls: ssl.SSLContext | None = None,
        roles: Sequence[tuple[str, bool, bool]] = (),
    ) -> Self:
        """Connect (over TLS with ``tls``: the server's certificate must name ``host``) and
        negotiate (``roles``: SCP/SCU role selection, see ``encode_associate_rq``). Raises
        ConnectError (unreachable, TLS failure, no answer) or AssociationRejected."""
        timeouts = timeouts or Timeouts()
        peer = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeouts.connect)
        except ConnectionRefusedError as exc:
            raise ConnectError(
                f"connection refused by {peer} (is the PACS listening?)", unreachable=True
            ) from exc
        except TimeoutError as exc:
            raise ConnectError(
                f"timed out after {timeouts.connect:g}s connecting to {peer}", unreachable=True
            ) from exc
        except socket.gaierror as exc:
            raise ConnectError(
                f"cannot resolve host {host!r}: {exc.strerror}", unreachable=True
            ) from exc
        except OSError as exc:
            raise ConnectError(
                f"cannot connect to {peer}: {exc.strerror or exc}", unreachable=True
            ) from exc
        set_nodelay(sock)
        if tls is not None:
            sock = tls_handshake(sock, tls, host, peer, timeouts.connect)
        try:
            sock.settimeout(timeouts.network)
            sock.sendall(encode_associate_rq(called_ae, calling_ae, contexts, max_pdu, roles))
            pdu_type, body = recv_pdu_raw(sock, bytearray(), timeouts.acse, peer)
        except ssl_errors() as exc:
            # TLS 1.3: a server that refuses our certificate says so after the handshake,
            # with an alert read here.
            sock.close()
            raise ConnectError(f"TLS with {peer} failed: {handshake_failure(exc)}") from exc
        except TimeoutError as exc:
            sock.close()
            raise ConnectError(
                f"no answer from {peer} to the association request within "
                f"{timeouts.acse:g}s (ACSE timeout)"
            ) from exc
        except (OSError, ConnectError) as exc:
            sock.close()
            what = (
                "closed the connection"
                if isinstance(exc, ConnectError)
                else f"broke the connection ({exc.strerror or exc})"
            )
            hint = "" if tls is not None else " (is it a DICOM TLS port?)"
            raise ConnectError(
                f"{peer} {what} without answering the association request{hint}"
            ) from exc
        except BaseException:
            sock.close()
            raise
        if pdu_type == A_ASSOCIATE_AC:
            ac = decode_associate_ac(body)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s", describe_negotiation(peer, called_ae, calling_ae, contexts, ac))
            return cls(sock, peer, contexts, ac, timeouts)
        sock.close()
        if pdu_type == A_ASSOCIATE_RJ and len(body) >= 4:
            result, source, reason = body[1], body[2], body[3]
            raise AssociationRejected(
                f"association rejected by {peer} (called AE {called_ae!r}, calling AE "
                f"{calling_ae!r}): {reject_text(result, source, reason)}",
                result=result,
                source=source,
                reason=reason,
            )
        if pdu_type == A_ABORT and len(body) >= 4:
            raise ConnectError(
                f"{peer} aborted the association request: {abort_text(body[2], body[3])}"
            )
        raise ConnectError(
            f"{peer} answered the association request with PDU type 0x{pdu_type:02X}"
        )

    # -- contexts ------------------------------------------------------------------------

    def context_for(self, abstract_syntax: str, transfer_syntax: str) -> int | None:
        return self._accepted.get((abstract_syntax, transfer_syntax))

    def accepted_syntaxes(self, abstract_syntax: str) -> list[str]:
        return [ts for (a, ts) in self._accepted if a == abstract_syntax]

    @property
    def is_alive(self) -> bool:
        return self._alive

    # -- waiting on several associations from one thread -----------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def buffered(self) -> bool:
        """Bytes of an answer are already read (ours, or TLS's own buffer): ``select`` on
        the socket would not see them."""
        if self._rbuf:
            return True
        pending = getattr(self._sock, "pending", None)
        return bool(pending is not None and pending())

    @property
    def answer_deadline(self) -> float:
        """When the answer to the last request sent is overdue (the DIMSE timeout runs from
        the end of the send)."""
        return self._sent_at + self._timeouts.dimse

    # -- DIMSE ---------------------------------------------------------------------------

    def c_echo(self) -> Response:
        ctx = self._accepted.get((dimse.VERIFICATION_SOP_CLASS, "1.2.840.10008.1.2"))
        if ctx is None:
            ctx = next(
                (c for (a, _), c in self._accepted.items() if a == dimse.VERIFICATION_SOP_CLASS),
                None,
            )
        if ctx is None:
            raise ConnectError(f"{self.peer} did not accept the Verification SOP class")
        msg_id = self._next_message_id()
        self._send_message(ctx, dimse.c_echo_rq(msg_id), None)
        return self._wait_response(msg_id, dimse.C_ECHO_RSP)

    def c_store(
        self,
        context_id: int,
        sop_class: str,
        sop_instance: str,
        dataset: FileSlice | bytes | memoryview,
    ) -> Response:
        return self.wait_c_store(self.send_c_store(context_id, sop_class, sop_instance, dataset))

    def send_c_store(
        self,
        context_id: int,
        sop_class: str,
        sop_instance: str,
        dataset: FileSlice | bytes | memoryview,
    ) -> int:
        """Send a C-STORE request without waiting for its response; returns its message id.

        Lets one thread keep several associations busy (``migrator store -j N``): send on
        each, then collect the responses with ``wait_c_store``. One request per association
        is outstanding at a time (no asynchronous operations window is negotiated).
        """
        msg_id = self._next_message_id()
        self._send_message(context_id, dimse.c_store_rq(msg_id, sop_class, sop_instance), dataset)
        self._sent_at = time.monotonic()
        return msg_id

    def wait_c_store(self, msg_id: int) -> Response:
        """The response to the C-STORE request ``msg_id`` sent with ``send_c_store``.

        The DIMSE timeout runs from the end of the send, not from this call: collecting
        responses one after another must not stretch it.
        """
        return self._wait_response(msg_id, dimse.C_STORE_RSP, since=self._sent_at)

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    # -- release / abort -----------------------------------------------------------------

    def release(self) -> None:
        """Orderly release; falls back to abort when the peer does not answer in time."""
        if not self._alive:
            return
        try:
            self._sock.settimeout(self._timeouts.network)
            self._sock.sendall(RELEASE_RQ)
            deadline = time.monotonic() + min(self._timeouts.acse, 10.0)
            while True:
                remaining = max(0.01, deadline - time.monotonic())
                pdu_type, _ = recv_pdu_raw(self._sock, self._rbuf, remaining, self.peer)
                if pdu_type in (A_RELEASE_RP, A_ABORT):
                    break
                if pdu_type == A_RELEASE_RQ:  # release collision (PS3.8 §7.2.2)
                    self._sock.sendall(RELEASE_RP)
                    break
        except (OSError, ConnectError):
            self.abort()
            return
        self._close()

    def abort(self) -> None:
        if self._alive:
            try:
                self._sock.settimeout(1.0)
                self._sock.sendall(encode_abort())
            except OSError:
                pass
        self._close()

    def _close(self) -> None:
        self._alive = False
        with contextlib.suppress(OSError):
            self._sock.close()

    # -- wire ----------------------------------------------------------------------------

    def _lost(
        self, why: str, exc: BaseException | None = None, *, by_peer: bool = False
    ) -> AssociationLost:
        self.abort()
        err = AssociationLost(f"association with {self.peer} lost: {why}", by_peer=by_peer)
        if exc is not None:
            err.__cause__ = exc
        return err

    def _send_message(
        self, ctx: int, command: bytes, dataset: FileSlice | bytes | memoryview | None
    ) -> None:
        if not self._alive:
            raise AssociationLost(f"association with {self.peer} is closed")
        frag = self._fragment
        bufs: list[bytes | memoryview] = []
        append_fragments(bufs, ctx, memoryview(command), frag, command=True, final=True)
        try:
            self._sock.settimeout(self._timeouts.network)
            if dataset is None:
                self._send_bufs(self._sock, bufs)
            elif isinstance(dataset, FileSlice):
                self._send_file(ctx, dataset, bufs)
            else:
                view = memoryview(dataset)
                if len(view) % 2:
                    view = memoryview(bytes(view) + b"\x00")  # see _send_file
                append_fragments(bufs, ctx, view, frag, command=False, final=True)
                self._send_bufs(self._sock, bufs)
        except SourceError:
            # The file changed under us mid-send: the peer holds half a dataset.
            self.abort()
            raise
        except TimeoutError as exc:
            raise self._lost(
                f"no progress sending for {self._timeouts.network:g}s (network timeout)", exc
            ) from exc
        except ssl_errors() as exc:
            raise self._lost(f"TLS send failed: {handshake_failure(exc)}", exc) from exc
        except OSError as exc:
            # Reset or broken pipe: the peer closed the connection under our request.
            raise self._lost(f"send failed: {exc.strerror or exc}", exc, by_peer=True) from exc

    def _send_file(self, ctx: int, src: FileSlice, bufs: list[bytes | memoryview]) -> None:
        if not self.tls and _HAVE_SENDFILE and src.length <= _SENDFILE_MAX:
            self._sendfile(ctx, src, bufs)
            return
        frag = self._fragment
        block = max(frag, (READ_BLOCK // frag) * frag)
        send_bufs = self._send_bufs
        fd = open_source(src.path)
        try:
            offset, remaining = src.offset, src.length
            head = src.head
            if remaining == 0:
                append_fragments(bufs, ctx, memoryview(head), frag, command=False, final=True)
            while remaining > 0:
                want = min(block, remaining)
                chunk = os.pread(fd, want, offset)
                if len(chunk) != want:
                    raise SourceError(f"{src.path} shrank while it was being sent")
                if head:
                    chunk, head = head + chunk, b""
                offset += want
                remaining -= want
                if remaining == 0 and src.length % 2:
                    # DICOM data is even-length; a deflated stream stored with an odd length
                    # must be padded with one NUL (PS3.5 A.5), and peers refuse odd PDVs.
                    chunk += b"\x00"
                append_fragments(
                    bufs, ctx, memoryview(chunk), frag, command=False, final=remaining == 0
                )
                send_bufs(self._sock, bufs)
                bufs = []
            if bufs:
                send_bufs(self._sock, bufs)
        finally:
            os.close(fd)

    def _sendfile(self, ctx: int, src: FileSlice, bufs: list[bytes | memoryview]) -> None:
        """Plain TCP: each P-DATA-TF header from memory (with MSG_MORE, so it leaves with its
        data), the dataset bytes straight from the page cache with ``os.sendfile``. Nothing
        is copied through Python: about half the CPU per MB of read-and-sendmsg."""
        frag = self._fragment
        sock = self._sock
        fd = open_source(src.path)
        try:
            # DICOM data is even-length; a deflated stream stored with an odd length must be
            # padded with one NUL (PS3.5 A.5), and peers refuse odd PDVs.
            head = memoryview(src.head)
            pad = (len(head) + src.length) % 2
            total = len(head) + src.length + pad
            offset = src.offset
            start = 0
            while True:
                size = min(frag, total - start)
                final = start + size == total
                bufs.append(
                    FRAGMENT_HEADER.pack(
                        P_DATA_TF, size + PDV_OVERHEAD, size + 2, ctx, 0x02 if final else 0
                    )
                )
                data = size - pad if final else size
                if start < len(head):
                    # A coerced file's rewritten elements go from memory before the file's
                    # own bytes, in the same fragments.
                    part = head[start : start + data]
                    bufs.append(part)
                    start += len(part)
                    size -= len(part)
                    data -= len(part)
                if final and pad and data == 0:
                    bufs.append(b"\x00")
                sendmsg_all(sock, bufs, socket.MSG_MORE if data else 0)
                bufs = []
                if data:
                    sendfile_all(sock, fd, offset, data, src.path, self._timeouts.network)
                    offset += data
                    if final and pad:
                        sock.sendall(b"\x00")
                start += size
                if final:
                    return
        finally:
            os.close(fd)

    def _wait_response(self, msg_id: int, expected: int, since: float | None = None) -> Response:
        deadline = (since or time.monotonic()) + self._timeouts.dimse
        command = bytearray()
        first = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not first:
                raise self._lost(f"no response within {self._timeouts.dimse:g}s (DIMSE timeout)")
            # An answer already received counts, however late we come to read it.
            remaining = max(remaining, 0.001)
            first = False
            body = self._next_p_data(remaining, self._timeouts.dimse)
            last = False
            pos = 0
            while pos + 6 <= len(body):
                (item_len,) = struct.unpack_from(">I", body, pos)
                control = body[pos + 5]
                if control & 0x01:
                    command += body[pos + 6 : pos + 4 + item_len]
                    last = bool(control & 0x02)
                pos += 4 + item_len
            if not last:
                continue
            fields = dimse.decode_command(bytes(command))
            command.clear()
            if fields.get(dimse.COMMAND_FIELD) != expected:
                raise self._lost(f"unexpected DIMSE command {fields.get(dimse.COMMAND_FIELD)!r}")
            if fields.get(dimse.MESSAGE_ID_BEING_RESPONDED_TO) != msg_id:
                raise self._lost("response to another message id")
            status = fields.get(dimse.STATUS)
            if not isinstance(status, int):
                raise self._lost("response without a status")
            comment = fields.get(dimse.ERROR_COMMENT, "")
            return Response(status, comment if isinstance(comment, str) else "")

    def _next_p_data(self, wait: float, timeout: float) -> bytes:
        """The next P-DATA-TF's body, waiting at most ``wait`` seconds (``timeout``: the
        DIMSE timeout, said in the error). The peer's A-ABORT or A-RELEASE-RQ, a timeout or
        a broken connection raise AssociationLost, the association closed."""
        try:
            pdu_type, body = recv_pdu_raw(self._sock, self._rbuf, wait, self.peer)
        except TimeoutError as exc:
            raise self._lost(f"no response within {timeout:g}s (DIMSE timeout)", exc) from exc
        except (OSError, ConnectError) as exc:
            raise self._lost(str(exc), exc, by_peer=True) from exc
        if pdu_type == A_ABORT:
            self._close()
            why = abort_text(body[2], body[3]) if len(body) >= 4 else "A-ABORT"
            raise AssociationLost(f"association with {self.peer} lost: {why}", by_peer=True)
        if pdu_type == A_RELEASE_RQ:
            try:
                self._sock.sendall(RELEASE_RP)
            except OSError:
                pass
            finally:
                self._close()
            raise AssociationLost(
                f"association with {self.peer} lost: the peer released it mid-operation",
                by_peer=True,
            )
        if pdu_type != P_DATA_TF:
            raise self._lost(f"unexpected PDU type 0x{pdu_type:02X} while waiting")
        return body
