"""C-FIND, C-GET and C-MOVE requests on our own upper layer (the old PACS as a source).

``RetrievingAssociation`` is an ``Association`` that also asks for instances::

    assoc = RetrievingAssociation.request(host, port, "OLDPACS", "MIGRATOR", contexts,
                                          roles=[(ct, False, True)], timeouts=timeouts)
    for answer in assoc.c_get(ctx, identifier(study, series, sops, ts), on_store):
        ...                      # each C-GET-RSP, pending ones first, the final one last

A C-GET's instances come back on the same association as C-STORE sub-operations (we are
their Storage SCP: the role asked for in the association request): each is handed whole to
``on_store(SubOperation)``, whose status answers it. A C-MOVE's go to another AE (our Storage
SCP, migrator/sources/movescp.py); here only its responses are read.

pynetdicom did this before: two threads per association polling every millisecond, each
sub-operation's command decoded and its answer encoded by pydicom, ~2.7 ms of CPU per
instance received. Here it is one thread reading PDUs when they come.

Failures that leave the request's outcome unknown (a timeout, an abort, a reset, a
protocol error) raise ``AssociationLost`` after aborting the association, as a C-STORE's.
"""

from __future__ import annotations

import contextlib
import select
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from migrator.dul import dimse
from migrator.dul.association import Association
from migrator.dul.pdu import A_RELEASE_RQ, RELEASE_RP
from migrator.dul.wire import recv_pdu_raw
from migrator.errors import ConnectError

IMPLICIT_LE = "1.2.840.10008.1.2"
PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True, slots=True)
class SubOperation:
    """One C-STORE sub-operation of a C-GET: the dataset as the source encoded it."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    dataset: bytes


@dataclass(frozen=True, slots=True)
class RetrieveAnswer:
    """One C-GET-RSP / C-MOVE-RSP: its status and sub-operation counts (None: not sent)."""

    status: int
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    #: the identifier that came with it (a C-FIND match; a final answer's failed UIDs)
    identifier: bytes = b""

    @property
    def pending(self) -> bool:
        return self.status in PENDING


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    abstract_syntax: str


def identifier(study: str, series: str, sops: list[str], transfer_syntax: str) -> bytes:
    """The IMAGE-level identifier of a retrieve (PS3.4 C.4.2.2.1: the level's unique key may
    hold a list of UIDs), in the transfer syntax of the retrieve's context; with no
    ``sops``, the SERIES-level one (the whole series); with no ``series`` either, the
    STUDY-level one (``study``: one UID or several, backslash-separated)."""
    if not sops and not series:
        return encode_identifier(
            [(0x00080052, b"CS", "STUDY"), (0x0020000D, b"UI", study)], transfer_syntax
        )
    if not sops:
        return encode_identifier(
            [
                (0x00080052, b"CS", "SERIES"),
                (0x0020000D, b"UI", study),
                (0x0020000E, b"UI", series),
            ],
            transfer_syntax,
        )
    return encode_identifier(
        [
            (0x00080018, b"UI", "\\".join(sops)),
            (0x00080052, b"CS", "IMAGE"),
            (0x0020000D, b"UI", study),
            (0x0020000E, b"UI", series),
        ],
        transfer_syntax,
    )


#: VRs whose values are padded with NUL (the others with a space)
_NUL_PADDED = {b"UI", b"OB", b"UN"}
#: VRs with a 4-byte length in explicit VR (PS3.5 Table 7.1-1)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def encode_identifier(elements: list[tuple[int, bytes, str]], transfer_syntax: str) -> bytes:
    """``(tag, VR, text)`` elements as a dataset in ``transfer_syntax`` (implicit or explicit
    VR little endian), in tag order: a query's keys ("" = return this attribute)."""
    explicit = transfer_syntax != IMPLICIT_LE
    out = bytearray()
    for tag, vr, text in sorted(elements):
        value = text.encode("latin-1")
        if len(value) % 2:
            value += b"\x00" if vr in _NUL_PADDED else b" "
        group, element = tag >> 16, tag & 0xFFFF
        if not explicit:
            out += struct.pack("<HHI", group, element, len(value))
        elif vr in _LONG_VRS:
            out += struct.pack("<HH2sHI", group, element, vr, 0, len(value))
        else:
            if len(value) > 0xFFFF:
                raise ValueError("a value too long for one element")
            out += struct.pack("<HH2sH", group, element, vr, len(value))
        out += value
    return bytes(out)


def decode_identifier(data: bytes, transfer_syntax: str) -> dict[int, str]:
    """A query's answer as {tag: text} for its top-level elements, values without their
    padding. Sequences (a source may add some unasked) are stepped over, whatever their
    length encoding; a malformed rest ends the reading."""
    explicit = transfer_syntax != IMPLICIT_LE
    out: dict[int, str] = {}
    pos, end = 0, len(data)
    while True:
        element = _element(data, pos, explicit)
        if element is None:
            return out
        tag, vr, start, length = element
        if length == _UNDEFINED:
            after = _skip_undefined(data, start, explicit, tag)
            if after is None:
                return out
            pos = after
            continue
        pos = start + length
        if vr != b"SQ" and pos <= end:
            out[tag] = data[start:pos].rstrip(b"\x00 ").decode("latin-1")


_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def _element(data: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int] | None:
    """(tag, VR, where its value starts, its length) of the element at ``pos``; items and
    delimiters have no VR in any syntax (PS3.5 §7.5). None past the end."""
    if pos + 8 > len(data):
        return None
    group, element = struct.unpack_from("<HH", data, pos)
    tag = (group << 16) | element
    if group == 0xFFFE or not explicit:
        (length,) = struct.unpack_from("<I", data, pos + 4)
        return tag, b"", pos + 8, length
    vr = bytes(data[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            return None
        (length,) = struct.unpack_from("<I", data, pos + 8)
        return tag, vr, pos + 12, length
    (length,) = struct.unpack_from("<H", data, pos + 6)
    return tag, vr, pos + 8, length


def _skip_undefined(data: bytes, pos: int, explicit: bool, tag: int, depth: int = 0) -> int | None:
    """Past the end of the undefined-length value of ``tag`` that starts at ``pos``: an
    item ends with its item delimiter, anything else (a sequence, encapsulated data) with
    a sequence delimiter; what is inside is stepped over the same way. None: malformed."""
    end_tag = _ITEM_END if tag == _ITEM else _SEQUENCE_END
    while depth <= 16:
        element = _element(data, pos, explicit)
        if element is None:
            return None
        inner, _, start, length = element
        if inner == end_tag:
            return start
        if length != _UNDEFINED:
            pos = start + length
            continue
        after = _skip_undefined(data, start, explicit, inner, depth + 1)
        if after is None:
            return None
        pos = after
    return None


class RetrievingAssociation(Association):
    """An association to the old PACS for C-GET / C-MOVE requests (and the pool of
    migrator/sources/getpool.py: ``is_established``, ``accepted_contexts``)."""

    @property
    def is_established(self) -> bool:
        """Alive, and the source has not closed it or said anything meanwhile (an idle
        association the source released or aborted is not handed out again)."""
        if not self.is_alive:
            return False
        poller = select.poll()
        try:
            poller.register(self._sock, select.POLLIN)
            readable = bool(poller.poll(0))
        except (OSError, ValueError):
            self.abort()
            return False
        if not readable and not self.buffered():
            return True
        # Nothing we asked for: a release (answered as such), an A-ABORT or a close.
        try:
            pdu_type, _ = recv_pdu_raw(self._sock, self._rbuf, 0.5, self.peer)
        except (OSError, ConnectError):
            pdu_type = 0
        if pdu_type == A_RELEASE_RQ:
            with contextlib.suppress(OSError):
                self._sock.sendall(RELEASE_RP)
            self._close()
        else:
            self.abort()
        return False

    @property
    def accepted_contexts(self) -> list[AcceptedContext]:
        return [AcceptedContext(a) for (a, _) in self._accepted]

    def context_of(self, abstract_syntax: str) -> tuple[int, str] | None:
        """An accepted context of ``abstract_syntax``: (context id, transfer syntax)."""
        for (a, ts), ctx in self._accepted.items():
            if a == abstract_syntax:
                return ctx, ts
        return None

    def c_get(
        self,
        model: str,
        study: str,
        series: str,
        sops: list[str],
        on_store: Callable[[SubOperation], int],
    ) -> Iterator[RetrieveAnswer]:
        """Ask for ``sops`` of a series (none: the whole series; no series either: the whole
        studies); yields each response, the final one last. Each C-STORE sub-operation on
        the way goes to ``on_store``, whose status answers it."""
        found = self.context_of(model)
        if found is None:
            raise ConnectError(f"{self.peer} did not accept the C-GET model {model}")
        ctx, ts = found
        msg_id = self._next_message_id()
        ident = identifier(study, series, sops, ts)
        self._send_message(ctx, dimse.c_get_rq(msg_id, model), ident)
        return self._answers(msg_id, dimse.C_GET_RSP, on_store)

    def c_find(
        self, model: str, elements: list[tuple[int, bytes, str]]
    ) -> Iterator[RetrieveAnswer]:
        """A C-FIND with these identifier elements (see ``encode_identifier``); yields each
        response, a match's with its identifier, the final one last."""
        found = self.context_of(model)
        if found is None:
            raise ConnectError(f"{self.peer} did not accept the C-FIND model {model}")
        ctx, ts = found
        msg_id = self._next_message_id()
        self._send_message(ctx, dimse.c_find_rq(msg_id, model), encode_identifier(elements, ts))
        return self._answers(msg_id, dimse.C_FIND_RSP, None)

    def c_move(
        self, model: str, destination: str, study: str, series: str, sops: list[str]
    ) -> Iterator[RetrieveAnswer]:
        """Ask for ``sops`` of a series (none: the whole series; no series either: the whole
        studies) to be sent to the AE
        ``destination``; yields each response, the final one last."""
        found = self.context_of(model)
        if found is None:
            raise ConnectError(f"{self.peer} did not accept the C-MOVE model {model}")
        ctx, ts = found
        msg_id = self._next_message_id()
        ident = identifier(study, series, sops, ts)
        self._send_message(ctx, dimse.c_move_rq(msg_id, model, destination), ident)
        return self._answers(msg_id, dimse.C_MOVE_RSP, None)

    # -- inside --------------------------------------------------------------------------

    def _answers(
        self, msg_id: int, expected: int, on_store: Callable[[SubOperation], int] | None
    ) -> Iterator[RetrieveAnswer]:
        syntaxes = {ctx: ts for (_, ts), ctx in self._accepted.items()}
        commands: dict[int, bytearray] = {}
        #: the sub-operation whose dataset is arriving: (context id, its command)
        incoming: tuple[int, dict[int, int | str]] | None = None
        data = bytearray()
        #: a response whose identifier is arriving, and the identifier so far
        awaiting: RetrieveAnswer | None = None
        awaiting_ctx = 0
        ident = bytearray()
        # The DIMSE timeout bounds each silence, not the whole request: a C-GET of a large
        # series takes as long as the source needs to send it.
        limit = self._timeouts.dimse
        while True:
            body = self._next_p_data(limit, limit)
            pos = 0
            while pos + 6 <= len(body):
                (item_len,) = struct.unpack_from(">I", body, pos)
                ctx, control = body[pos + 4], body[pos + 5]
                piece = body[pos + 6 : pos + 4 + item_len]
                pos += 4 + item_len
                last = bool(control & 0x02)
                if not control & 0x01:  # a dataset fragment
                    if incoming is not None and incoming[0] == ctx:
                        data += piece
                        if last:
                            self._stored(incoming, syntaxes.get(ctx), data, on_store)
                            incoming, data = None, bytearray()
                    elif awaiting is not None and awaiting_ctx == ctx:
                        ident += piece
                        if last:
                            answer = replace(awaiting, identifier=bytes(ident))
                            awaiting, ident = None, bytearray()
                            yield answer
                            if not answer.pending:
                                return
                    else:
                        raise self._lost("a dataset without its command")
                    continue
                command = commands.setdefault(ctx, bytearray())
                command += piece
                if not last:
                    continue
                fields = dimse.decode_command(bytes(command))
                del commands[ctx]
                field = fields.get(dimse.COMMAND_FIELD)
                has_data = fields.get(dimse.COMMAND_DATA_SET_TYPE) != dimse.NO_DATASET
                if incoming is not None or awaiting is not None:
                    # A command while a dataset is still to come: never glue two together.
                    raise self._lost("a DIMSE command before the previous one's dataset")
                if field == dimse.C_STORE_RQ and has_data:
                    incoming, data = (ctx, fields), bytearray()
                    continue
                if field != expected:
                    raise self._lost(f"unexpected DIMSE command {field!r}")
                if fields.get(dimse.MESSAGE_ID_BEING_RESPONDED_TO) != msg_id:
                    raise self._lost("response to another message id")
                answer = self._answer(fields)
                if has_data:  # yielded with its identifier, once that has come
                    awaiting, awaiting_ctx, ident = answer, ctx, bytearray()
                    continue
                yield answer
                if not answer.pending:
                    return

    def _stored(
        self,
        incoming: tuple[int, dict[int, int | str]],
        syntax: str | None,
        data: bytearray,
        on_store: Callable[[SubOperation], int] | None,
    ) -> None:
        ctx, fields = incoming
        sop_class = str(fields.get(dimse.AFFECTED_SOP_CLASS, ""))
        sop = str(fields.get(dimse.AFFECTED_SOP_INSTANCE, ""))
        message_id = fields.get(dimse.MESSAGE_ID)
        if not isinstance(message_id, int):
            raise self._lost("a C-STORE sub-operation without a message id")
        if on_store is None:
            status = 0xA900  # (a C-MOVE's sub-operations do not come here)
        elif syntax is None:
            status = 0x0122  # on a context we did not accept: its syntax is unknown
        else:
            status = on_store(SubOperation(sop_class, sop, syntax, bytes(data)))
        self._send_message(ctx, dimse.c_store_rsp(message_id, sop_class, sop, status), None)

    def _answer(self, fields: dict[int, int | str]) -> RetrieveAnswer:
        def n(tag: int) -> int | None:
            value = fields.get(tag)
            return value if isinstance(value, int) else None

        status = fields.get(dimse.STATUS)
        if not isinstance(status, int):
            raise self._lost("a C-GET / C-MOVE response without a status")
        return RetrieveAnswer(
            status,
            remaining=n(dimse.REMAINING),
            completed=n(dimse.COMPLETED),
            failed=n(dimse.FAILED),
            warning=n(dimse.WARNING),
        )


__all__ = [
    "RetrieveAnswer",
    "RetrievingAssociation",
    "SubOperation",
    "decode_identifier",
    "encode_identifier",
    "identifier",
]
