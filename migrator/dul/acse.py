"""The acceptor's association PDUs (PS3.8 §9.3.2-4): A-ASSOCIATE-RQ decoded from untrusted
bytes, presentation contexts negotiated against a policy, A-ASSOCIATE-AC and -RJ encoded.

Nothing here touches a socket: ``migrator.dul.acceptor`` reads and writes the PDUs.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from migrator.dul.pdu import (
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    PDU_HEADER,
    ProposedContext,
    UserInfo,
    decode_user_info,
    item,
    iter_items,
    uid_text,
)
from migrator.validation import is_valid_uid

#: PS3.8 §9.3.3.2 presentation context results
ACCEPTANCE = 0
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4
#: A fixed part shorter than this is no A-ASSOCIATE-RQ (PS3.8 Table 9-11).
_FIXED = 68


class MalformedPDU(ValueError):
    """The peer's PDU cannot be decoded (answered A-ABORT)."""


@dataclass(slots=True)
class AssociateRQ:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    #: the called and calling AE fields as received, echoed in the A-ASSOCIATE-AC
    ae_fields: bytes = bytes(32)
    contexts: list[ProposedContext] = field(default_factory=list)
    user: UserInfo = field(default_factory=UserInfo)


def _ae_text(raw: bytes) -> str:
    """An AE title as sent, for validation and the log: NUL and space padding removed,
    anything not ASCII replaced (``repr`` in the log escapes control characters)."""
    return raw.rstrip(b"\x00 ").lstrip(b" ").decode("ascii", "replace")


def decode_associate_rq(body: bytes) -> AssociateRQ:
    """The variable part of an A-ASSOCIATE-RQ (after the 6-byte PDU header).

    Raises MalformedPDU when the fixed part is short or a presentation context item is
    too short to hold its id; unknown items are skipped (PS3.8 §9.3.1: "shall be ignored").
    """
    if len(body) < _FIXED:
        raise MalformedPDU(f"A-ASSOCIATE-RQ of {len(body)} bytes (at least {_FIXED} expected)")
    (version,) = struct.unpack_from(">H", body, 0)
    rq = AssociateRQ(
        protocol_version=version,
        called_ae=_ae_text(body[4:20]),
        calling_ae=_ae_text(body[20:36]),
        application_context="",
        ae_fields=bytes(body[4:36]),
    )
    for item_type, start, end in iter_items(body, _FIXED, len(body)):
        if item_type == 0x10:
            rq.application_context = uid_text(body[start:end])
        elif item_type == 0x20:
            if end - start < 4:
                raise MalformedPDU("presentation context item without its context id")
            abstract = ""
            syntaxes: list[str] = []
            for st, ss, se in iter_items(body, start + 4, end):
                if st == 0x30:
                    abstract = uid_text(body[ss:se])
                elif st == 0x40:
                    syntaxes.append(uid_text(body[ss:se]))
            rq.contexts.append(ProposedContext(body[start], abstract, tuple(syntaxes)))
        elif item_type == 0x50:
            rq.user = decode_user_info(body, start, end)
    return rq


@dataclass(frozen=True, slots=True)
class ContextPolicy:
    """What an acceptor takes: abstract syntax -> the transfer syntaxes it accepts in.

    ``default`` applies to abstract syntaxes not in ``syntaxes`` (None: rejected). Of the
    syntaxes a context proposes, the first one the policy accepts is chosen: the
    requestor lists its preference first (PS3.8 §9.3.2.2 leaves the choice to us).
    """

    syntaxes: Mapping[str, Collection[str]]
    default: Collection[str] | None = None

    def negotiate(self, ctx: ProposedContext) -> tuple[int, str]:
        accepted = self.syntaxes.get(ctx.abstract_syntax, self.default)
        if accepted is None or not is_valid_uid(ctx.abstract_syntax):
            return ABSTRACT_SYNTAX_NOT_SUPPORTED, ""
        for ts in ctx.transfer_syntaxes:
            if ts in accepted:
                return ACCEPTANCE, ts
        return TRANSFER_SYNTAXES_NOT_SUPPORTED, ""


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


def negotiate(
    rq: AssociateRQ, policy: ContextPolicy
) -> tuple[dict[int, AcceptedContext], list[tuple[ProposedContext, int, str]]]:
    """(accepted contexts by id, every context with its result and syntax, in order)."""
    accepted: dict[int, AcceptedContext] = {}
    results: list[tuple[ProposedContext, int, str]] = []
    for ctx in rq.contexts:
        result, ts = policy.negotiate(ctx)
        if ctx.context_id % 2 == 0 or ctx.context_id in accepted:
            result, ts = 1, ""  # even or repeated ids are invalid (PS3.8 §9.3.2.2): user-rejection
        results.append((ctx, result, ts))
        if result == ACCEPTANCE:
            accepted[ctx.context_id] = AcceptedContext(ctx.context_id, ctx.abstract_syntax, ts)
    return accepted, results


def encode_associate_ac(
    rq: AssociateRQ, results: list[tuple[ProposedContext, int, str]], max_pdu: int
) -> bytes:
    """The A-ASSOCIATE-AC: the AE fields echo the request (PS3.8 Table 9-17), one result
    per proposed context, our maximum PDU and implementation identity."""
    body = bytearray(struct.pack(">HH", 1, 0))
    body += rq.ae_fields + bytes(32)
    body += item(0x10, APPLICATION_CONTEXT.encode())
    for ctx, result, ts in results:
        sub = struct.pack(">BBBB", ctx.context_id, 0, result, 0)
        # A rejected context still carries a transfer syntax sub-item, whose value is
        # not significant (PS3.8 §9.3.3.2): an empty one.
        body += item(0x21, sub + item(0x40, ts.encode("ascii")))
    user = item(0x51, struct.pack(">I", max_pdu))
    user += item(0x52, IMPLEMENTATION_CLASS_UID.encode())
    user += item(0x55, IMPLEMENTATION_VERSION.encode())
    body += item(0x50, user)
    return PDU_HEADER.pack(A_ASSOCIATE_AC, len(body)) + bytes(body)


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 §9.3.4): result 1 permanent / 2 transient, source, reason."""
    return PDU_HEADER.pack(A_ASSOCIATE_RJ, 4) + bytes([0, result, source, reason])


#: PS3.8 §9.3.4 rejections the acceptor itself decides
REJECT_NO_REASON = (1, 1, 1)
REJECT_APPLICATION_CONTEXT = (1, 1, 2)
REJECT_CALLING_AE = (1, 1, 3)
REJECT_PROTOCOL_VERSION = (1, 2, 2)
REJECT_LOCAL_LIMIT = (2, 3, 2)
