"""The PS3.5 data encoding that the header scan and the damage checks share.

Transfer Syntax UIDs, the VR tables of explicit VR, the item and delimiter tags, the
``struct`` formats that decode an element header in one call, and skipping a sequence of
undefined length (items may nest) by the lengths of its elements, without decoding them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from migrator.dicomfile.header import NotDicomError

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

# VRs whose explicit encoding has 2 reserved bytes and a 4-byte length (PS3.5 §7.1.2).
LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
VALID_VRS = LONG_VRS | {
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FL",
    b"FD",
    b"IS",
    b"LO",
    b"LT",
    b"PN",
    b"SH",
    b"SL",
    b"SS",
    b"ST",
    b"TM",
    b"UI",
    b"UL",
    b"US",
}
UNDEFINED = 0xFFFFFFFF
ITEM, _ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

#: ``read(offset, n)``: up to ``n`` bytes of the whole file from ``offset``
Reader = Callable[[int, int], bytes]


class NeedMoreBytes(Exception):
    """The header continues past the bytes read so far."""


SYNTAX_NAMES = {
    IMPLICIT_LE: "Implicit VR Little Endian",
    EXPLICIT_LE: "Explicit VR Little Endian",
    EXPLICIT_BE: "Explicit VR Big Endian",
}
NATIVE = frozenset(SYNTAX_NAMES)


def tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def text(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()


EXPLICIT_HDR = {"<": struct.Struct("<HH2sH"), ">": struct.Struct(">HH2sH")}
IMPLICIT_HDR = {"<": struct.Struct("<HHI"), ">": struct.Struct(">HHI")}
U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
US = {"<": struct.Struct("<H"), ">": struct.Struct(">H")}


def _element_header(head: bytes, pos: int, endian: str, explicit: bool) -> tuple[int, int]:
    if explicit:
        if pos + 8 > len(head):
            raise NeedMoreBytes
        vr = head[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(head):
                raise NeedMoreBytes
            (length,) = struct.unpack_from(endian + "I", head, pos + 8)
            return pos + 12, length
        if vr not in VALID_VRS:
            raise NotDicomError(f"corrupt dataset: invalid VR {vr!r} at byte {pos}")
        (length,) = struct.unpack_from(endian + "H", head, pos + 6)
        return pos + 8, length
    (length,) = struct.unpack_from(endian + "I", head, pos + 4)
    return pos + 8, length


def skip_undefined(head: bytes, pos: int, endian: str, explicit: bool) -> int:
    """Skip a sequence of undefined length (items may nest); return the position after it."""
    depth = 1
    end = len(head)
    while depth:
        if pos + 8 > end:
            raise NeedMoreBytes
        group, elem = struct.unpack_from(endian + "HH", head, pos)
        tag = (group << 16) | elem
        if tag in (ITEM, _ITEM_END, SEQ_END):
            (length,) = struct.unpack_from(endian + "I", head, pos + 4)
            pos += 8
            if tag == SEQ_END:
                depth -= 1
            elif tag == ITEM and length != UNDEFINED:
                pos += length  # defined-length item: skip its contents whole
            continue
        pos, length = _element_header(head, pos, endian, explicit)
        if length == UNDEFINED:
            depth += 1
            continue
        pos += length
    if pos > end:
        raise NeedMoreBytes
    return pos
