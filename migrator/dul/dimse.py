"""DIMSE command sets (PS3.7 §9.3, §E): always Implicit VR Little Endian, group 0000."""

from __future__ import annotations

import functools
import struct

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0001
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

_ELEM = struct.Struct("<HHI")


def _ui(tag_elem: int, uid: str) -> bytes:
    if not uid:
        return b""  # optional and unknown: left out
    raw = uid.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00"  # UI values are padded with NUL to even length (PS3.5 §9.1)
    return _ELEM.pack(0, tag_elem, len(raw)) + raw


def _us(tag_elem: int, value: int) -> bytes:
    return _US.pack(0, tag_elem, 2, value)


_US = struct.Struct("<HHIH")


def _with_group_length(elements: bytes) -> bytes:
    return _ELEM.pack(0, 0x0000, 4) + struct.pack("<I", len(elements)) + elements


def c_store_rq(message_id: int, sop_class: str, sop_instance: str, priority: int = 0) -> bytes:
    return _with_group_length(
        _ui(0x0002, sop_class)
        + _us(0x0100, C_STORE_RQ)
        + _us(0x0110, message_id)
        + _us(0x0700, priority)
        + _us(0x0800, DATASET_PRESENT)
        + _ui(0x1000, sop_instance)
    )


def c_echo_rq(message_id: int) -> bytes:
    return _with_group_length(
        _ui(0x0002, VERIFICATION_SOP_CLASS)
        + _us(0x0100, C_ECHO_RQ)
        + _us(0x0110, message_id)
        + _us(0x0800, NO_DATASET)
    )


def c_get_rq(message_id: int, sop_class: str, priority: int = 0) -> bytes:
    """C-GET-RQ (PS3.7 §9.3.3.1); its identifier follows as the dataset."""
    return _with_group_length(
        _ui(0x0002, sop_class)
        + _us(0x0100, C_GET_RQ)
        + _us(0x0110, message_id)
        + _us(0x0700, priority)
        + _us(0x0800, DATASET_PRESENT)
    )


def c_find_rq(message_id: int, sop_class: str, priority: int = 0) -> bytes:
    """C-FIND-RQ (PS3.7 §9.3.2.1); its identifier follows as the dataset."""
    return _with_group_length(
        _ui(0x0002, sop_class)
        + _us(0x0100, C_FIND_RQ)
        + _us(0x0110, message_id)
        + _us(0x0700, priority)
        + _us(0x0800, DATASET_PRESENT)
    )


def c_move_rq(message_id: int, sop_class: str, destination: str, priority: int = 0) -> bytes:
    """C-MOVE-RQ (PS3.7 §9.3.4.1) to the AE title ``destination``."""
    raw = destination.encode("ascii")
    if len(raw) % 2:
        raw += b" "  # AE values are padded with a space (PS3.5 §6.2)
    return _with_group_length(
        _ui(0x0002, sop_class)
        + _us(0x0100, C_MOVE_RQ)
        + _us(0x0110, message_id)
        + _ELEM.pack(0, 0x0600, len(raw))
        + raw
        + _us(0x0700, priority)
        + _us(0x0800, DATASET_PRESENT)
    )


_US_TAGS = {0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1020, 0x1021, 0x1022, 0x1023, 0x1031}


def decode_command(data: bytes) -> dict[int, int | str]:
    """Decode a command set into {element number: value}; unknown elements as text."""
    out: dict[int, int | str] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, elem, length = _ELEM.unpack_from(data, pos)
        pos += 8
        value = data[pos : pos + length]
        pos += length
        if group != 0:
            break
        if elem in _US_TAGS and length == 2:
            out[elem] = struct.unpack("<H", value)[0]
        elif elem == 0x0000 and length == 4:
            out[elem] = struct.unpack("<I", value)[0]
        else:
            out[elem] = value.rstrip(b"\x00 ").decode("ascii", "replace")
    return out


AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE = 0x1000
REMAINING = 0x1020
COMPLETED = 0x1021
FAILED = 0x1022
WARNING = 0x1023
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031


def _lo(tag_elem: int, text: str) -> bytes:
    raw = text.encode("ascii", "replace")[:64]  # LO: at most 64 characters (PS3.5 §6.2)
    if len(raw) % 2:
        raw += b" "
    return _ELEM.pack(0, tag_elem, len(raw)) + raw


_STORE_RSP_FIELDS = _us(0x0100, C_STORE_RSP)
_NO_DATASET = _us(0x0800, NO_DATASET)


@functools.lru_cache(maxsize=256)
def _class_ui(uid: str) -> bytes:
    """The Affected SOP Class UID element: a receiver answers the same few classes."""
    return _ui(0x0002, uid)


def c_store_rsp(
    message_id: int, sop_class: str, sop_instance: str, status: int, comment: str = ""
) -> bytes:
    """C-STORE-RSP (PS3.7 §9.3.1.2). The affected UIDs echo the request's; pass "" for one
    that is no valid UID (it is optional in the response, and must not carry junk back)."""
    return _with_group_length(
        _class_ui(sop_class)
        + _STORE_RSP_FIELDS
        + _us(0x0120, message_id)
        + _NO_DATASET
        + _us(0x0900, status)
        + (_lo(0x0902, comment) if comment and status & 0xF000 else b"")
        + _ui(0x1000, sop_instance)
    )


def c_echo_rsp(message_id: int, status: int = 0) -> bytes:
    """C-ECHO-RSP (PS3.7 §9.3.5.2)."""
    return _with_group_length(
        _ui(0x0002, VERIFICATION_SOP_CLASS)
        + _us(0x0100, C_ECHO_RSP)
        + _us(0x0120, message_id)
        + _us(0x0800, NO_DATASET)
        + _us(0x0900, status)
    )
