"""PDU encoding and decoding (PS3.8 §9.3): the requestor's PDUs, and the item helpers that
the acceptor's (``migrator.dul.acse``) share."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Our implementation identity (PS3.7 Annex D.3.3.2): a UID under the 2.25 UUID root.
IMPLEMENTATION_CLASS_UID = "2.25.229851651187622938937286493446316102717"
IMPLEMENTATION_VERSION = "PACSMIGRATOR_01"

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context id, message control

# Context negotiation results (PS3.8 §9.3.3.2)
CONTEXT_RESULTS = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason (provider rejection)",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}

# A-ASSOCIATE-RJ (PS3.8 §9.3.4): source -> {reason: text}
_REJECT_REASONS: dict[int, dict[int, str]] = {
    1: {
        1: "no reason given",
        2: "application context name not supported",
        3: "calling AE title not recognized",
        7: "called AE title not recognized",
    },
    2: {1: "no reason given", 2: "protocol version not supported"},
    3: {1: "temporary congestion", 2: "local limit exceeded (too many associations)"},
}
_REJECT_SOURCES = {
    1: "service user",
    2: "service provider (ACSE)",
    3: "service provider (presentation)",
}
_ABORT_SOURCES = {0: "service user", 1: "reserved", 2: "service provider"}
_ABORT_REASONS = {
    0: "not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


def reject_text(result: int, source: int, reason: int) -> str:
    kind = "permanent" if result == 1 else "transient" if result == 2 else f"result {result}"
    src = _REJECT_SOURCES.get(source, f"source {source}")
    why = _REJECT_REASONS.get(source, {}).get(reason, f"reason {reason}")
    return f"{why} ({kind}, by {src})"


def abort_text(source: int, reason: int) -> str:
    src = _ABORT_SOURCES.get(source, f"source {source}")
    why = _ABORT_REASONS.get(reason, f"reason {reason}") if source == 2 else "no reason"
    return f"A-ABORT from {src}: {why}"


def item(item_type: int, payload: bytes) -> bytes:
    """One item of an A-ASSOCIATE PDU: type, reserved, 16-bit length, payload."""
    return struct.pack(">BxH", item_type, len(payload)) + payload


def ae_field(title: str) -> bytes:
    return title.encode("ascii").ljust(16, b" ")


@dataclass(frozen=True, slots=True)
class ProposedContext:
    context_id: int  # odd, 1..255
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


def encode_associate_rq(
    called_ae: str,
    calling_ae: str,
    contexts: list[ProposedContext],
    max_pdu: int,
    roles: Sequence[tuple[str, bool, bool]] = (),
) -> bytes:
    """``roles``: SCP/SCU role selection items (PS3.7 D.3.3.4), (SOP class, SCU, SCP): a
    C-GET requestor asks for the SCP role of the storage classes it retrieves."""
    body = bytearray()
    body += struct.pack(">HH", 1, 0)
    body += ae_field(called_ae) + ae_field(calling_ae) + bytes(32)
    body += item(0x10, APPLICATION_CONTEXT.encode())
    for ctx in contexts:
        sub = bytearray(struct.pack(">BBBB", ctx.context_id, 0, 0, 0))
        sub += item(0x30, ctx.abstract_syntax.encode())
        for ts in ctx.transfer_syntaxes:
            sub += item(0x40, ts.encode())
        body += item(0x20, bytes(sub))
    user = item(0x51, struct.pack(">I", max_pdu))
    user += item(0x52, IMPLEMENTATION_CLASS_UID.encode())
    user += item(0x55, IMPLEMENTATION_VERSION.encode())
    # After the version name, as pynetdicom orders them (Orthanc and dcmqrscp take that).
    for uid, scu, scp in roles:
        raw = uid.encode()
        user += item(0x54, struct.pack(">H", len(raw)) + raw + bytes([int(scu), int(scp)]))
    body += item(0x50, user)
    return PDU_HEADER.pack(A_ASSOCIATE_RQ, len(body)) + bytes(body)


@dataclass(slots=True)
class AssociateAC:
    #: context id -> (result, transfer syntax chosen by the acceptor or "")
    contexts: dict[int, tuple[int, str]] = field(default_factory=dict)
    #: 0 means "no limit" (PS3.8 §D.1)
    peer_max_pdu: int = 0
    implementation_class_uid: str = ""
    implementation_version: str = ""


def uid_text(raw: bytes) -> str:
    # Some implementations pad UIDs in PDU items with NUL or space.
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def iter_items(body: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(item type, start of its value, end of its value) for each item in body[pos:end].

    An item that claims more than is left is cut at ``end``: a broken peer's lengths never
    make us read past the PDU (both sides decode untrusted bytes with this).
    """
    while pos + 4 <= end:
        item_type, length = struct.unpack_from(">BxH", body, pos)
        start, pos = pos + 4, min(pos + 4 + length, end)
        yield item_type, start, pos


def decode_associate_ac(body: bytes) -> AssociateAC:
    """Decode the variable part of an A-ASSOCIATE-AC (after the 6-byte PDU header)."""
    ac = AssociateAC()
    # protocol version, reserved, called/calling AE echo, 32 reserved: 68 bytes
    for item_type, start, end in iter_items(body, 68, len(body)):
        if item_type == 0x21 and end - start >= 4:
            ctx_id, result = body[start], body[start + 2]
            ts = ""
            for st, ss, se in iter_items(body, start + 4, end):
                if st == 0x40:
                    ts = uid_text(body[ss:se])
            ac.contexts[ctx_id] = (result, ts)
        elif item_type == 0x50:
            user = decode_user_info(body, start, end)
            ac.peer_max_pdu = user.max_pdu
            ac.implementation_class_uid = user.implementation_class_uid
            ac.implementation_version = user.implementation_version
    return ac


@dataclass(slots=True)
class UserInfo:
    """The user information item (PS3.8 §9.3.2.3, PS3.7 Annex D.3.3)."""

    max_pdu: int = 0
    implementation_class_uid: str = ""
    implementation_version: str = ""
    #: SCP/SCU role selection (PS3.7 D.3.3.4): abstract syntax -> (SCU role, SCP role)
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)


def decode_user_info(body: bytes, start: int, end: int) -> UserInfo:
    user = UserInfo()
    for st, ss, se in iter_items(body, start, end):
        value = body[ss:se]
        if st == 0x51 and len(value) == 4:
            (user.max_pdu,) = struct.unpack(">I", value)
        elif st == 0x52:
            user.implementation_class_uid = uid_text(value)
        elif st == 0x55:
            user.implementation_version = value.decode("ascii", "replace").strip()
        elif st == 0x54 and len(value) >= 4:
            (n,) = struct.unpack_from(">H", value, 0)
            if 2 + n + 2 <= len(value):
                user.roles[uid_text(value[2 : 2 + n])] = (value[2 + n], value[3 + n])
    return user


RELEASE_RQ = PDU_HEADER.pack(A_RELEASE_RQ, 4) + bytes(4)
RELEASE_RP = PDU_HEADER.pack(A_RELEASE_RP, 4) + bytes(4)


def encode_abort(source: int = 0, reason: int = 0) -> bytes:
    return PDU_HEADER.pack(A_ABORT, 4) + bytes([0, 0, source, reason])


def describe_negotiation(
    peer: str, called_ae: str, calling_ae: str, proposed: list[ProposedContext], ac: AssociateAC
) -> str:
    """One line for ``-vv``: what was proposed, what the peer accepted (in which syntax) and
    rejected (why), and the peer's limits and implementation. UIDs are named from pydicom's
    table (``migrator.uidnames``); no patient data is involved."""
    from migrator.uidnames import name

    accepted, rejected = [], []
    for ctx in proposed:
        result, ts = ac.contexts.get(ctx.context_id, (2, ""))
        if result == 0 and ts:
            accepted.append(f"{name(ctx.abstract_syntax)} [{name(ts)}]")
        else:
            rejected.append(f"{name(ctx.abstract_syntax)} ({CONTEXT_RESULTS.get(result, '?')})")
    implementation = " ".join(
        x for x in (ac.implementation_version, f"({ac.implementation_class_uid})") if x != "()"
    )
    text = (
        f"association with {peer} (called AE {called_ae}, calling AE {calling_ae}): "
        f"proposed {len(proposed)} contexts, accepted {len(accepted)}: {', '.join(accepted)}"
    )
    if rejected:
        text += f"; rejected {len(rejected)}: {', '.join(rejected)}"
    limit = ac.peer_max_pdu or "unlimited"
    return f"{text}; peer max PDU {limit}, implementation {implementation or 'not given'}"
