"""DIMSE command sets (PS3.7 §9.3, §E): always Implicit VR Little Endian, group 0000."""

from __future__ import annotations

import struct

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0001
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

_ELEM = struct.Struct("<HHI")


def _ui(tag_elem: int, uid: str) -> bytes:
    raw = uid.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00"  # UI values are padded with NUL to even length (PS3.5 §9.1)
    return _ELEM.pack(0, tag_elem, len(raw)) + raw


def _us(tag_elem: int, value: int) -> bytes:
    return _ELEM.pack(0, tag_elem, 2) + struct.pack("<H", value)


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


_US_TAGS = {0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900}


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


COMMAND_FIELD = 0x0100
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
STATUS = 0x0900
ERROR_COMMENT = 0x0902
