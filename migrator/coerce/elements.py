"""The header region of a dataset as elements: parsed without pydicom, written back byte for
byte except where a rule changed something.

Coercion rewrites only the elements before the first one no rule needs (at the latest Pixel
Data): that *region* is parsed here, an element no rule touched keeps its original bytes
(``raw``), a changed one is encoded again, and the rest of the file is streamed as stored.
Sequences in the region are parsed into items so that rules can reach inside them; a changed
sequence is written with defined lengths (PS3.5 7.5.1, either form is allowed).

Group Length elements (gggg,0000) of groups >= 0008 are retired (PS3.5 7.2): one of a group
whose length changed is dropped instead of being recomputed over a group that may continue
past the region.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from migrator.coerce.dictionary import vr_of
from migrator.coerce.errors import CoercionError
from migrator.dicomfile.encoding import (
    DEFLATED_LE,
    EXPLICIT_BE,
    IMPLICIT_LE,
    ITEM,
    LONG_VRS,
    SEQ_END,
    UNDEFINED,
    VALID_VRS,
    NeedMoreBytes,
    skip_undefined,
)

ITEM_END = 0xFFFEE00D
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a dataset is encoded: byte order and explicit or implicit VR."""

    endian: str
    explicit: bool

    @classmethod
    def of(cls, transfer_syntax: str) -> Encoding:
        if transfer_syntax == DEFLATED_LE:
            # The dataset is one zlib stream: no element can be rewritten in place.
            raise CoercionError("coercion of Deflated Explicit VR Little Endian files")
        if transfer_syntax == IMPLICIT_LE:
            return cls("<", False)
        if transfer_syntax == EXPLICIT_BE:
            return cls(">", True)
        return cls("<", True)  # Explicit LE, and every encapsulated syntax


@dataclass(slots=True)
class Element:
    tag: int
    vr: str
    #: The value field (non-sequences); for a sequence see ``items``
    value: bytes = b""
    #: A sequence's items, parsed (None for other elements)
    items: list[Dataset] | None = None
    #: The element as it was read, or None once changed (then it is encoded again)
    raw: bytes | None = None


class Dataset:
    """Elements by tag. Short elements of the header region stay *spans* of its bytes (tag
    -> start, value start, end, VR) until a rule reads one: building an object per element
    of every file costs more than the rules themselves."""

    __slots__ = ("changed_groups", "data", "elements", "spans")

    def __init__(
        self,
        elements: dict[int, Element] | None = None,
        data: bytes = b"",
        spans: dict[int, tuple[int, int, int, bytes]] | None = None,
    ) -> None:
        self.elements: dict[int, Element] = elements if elements is not None else {}
        self.data = data
        self.spans: dict[int, tuple[int, int, int, bytes]] = spans if spans is not None else {}
        #: Groups whose length changed (their Group Length element is dropped)
        self.changed_groups: set[int] = set()

    def get(self, tag: int) -> Element | None:
        found = self.elements.get(tag)
        if found is None:
            span = self.spans.pop(tag, None)
            if span is not None:
                start, value, end, vr = span
                data = self.data
                found = Element(tag, vr.decode(), data[value:end], raw=data[start:end])
                self.elements[tag] = found
        return found

    def put(self, element: Element) -> None:
        element.raw = None
        self.spans.pop(element.tag, None)
        self.elements[element.tag] = element
        self.changed_groups.add(element.tag >> 16)

    def delete(self, tag: int) -> bool:
        if self.get(tag) is None:
            return False
        del self.elements[tag]
        self.changed_groups.add(tag >> 16)
        return True

    def tags(self) -> list[int]:
        return sorted([*self.elements, *self.spans])


def dictionary_vr(tag: int) -> str:
    """The VR of ``tag`` in the data dictionary ("UN" when unknown: private, or retired)."""
    return vr_of(tag)


def parse_region(
    data: bytes, enc: Encoding, stop_after: int, *, at_end: bool
) -> tuple[Dataset, int]:
    """The top-level elements of ``data`` (a dataset's start) up to the first one whose tag is
    above ``stop_after`` or is Pixel Data; and the offset where that one starts.

    Raises ``NeedMoreBytes`` when ``data`` ends inside the region (``at_end``: the file
    itself ends there, which is the end of the region when it falls between elements)."""
    elements: dict[int, Element] = {}
    spans: dict[int, tuple[int, int, int, bytes]] = {}
    pos = 0
    size = len(data)
    stop = min(stop_after, PIXEL_DATA - 1)
    short = _SHORT[enc.endian]
    try:
        while pos < size:
            if pos + 8 > size:
                raise NeedMoreBytes
            group, elem, vr_b, length = short.unpack_from(data, pos)
            tag = (group << 16) | elem
            if tag > stop:
                return Dataset(elements, data, spans), pos
            if enc.explicit and vr_b not in LONG_VRS and vr_b in VALID_VRS:
                # The common case inline: a short explicit-VR element (~1 us, not ~5).
                end = pos + 8 + length
                if end > size:
                    raise NeedMoreBytes
                spans[tag] = (pos, pos + 8, end, vr_b)
                pos = end
                continue
            element, pos = _element(data, pos, enc)
            elements[tag] = element
    except NeedMoreBytes:
        if at_end:
            raise CoercionError("truncated dataset") from None
        raise
    if not at_end:
        raise NeedMoreBytes
    return Dataset(elements, data, spans), pos


_SHORT = {"<": struct.Struct("<HH2sH"), ">": struct.Struct(">HH2sH")}


def _tag(data: bytes, pos: int, enc: Encoding) -> int:
    group, elem = struct.unpack_from(enc.endian + "HH", data, pos)
    return int((group << 16) | elem)


def _element(data: bytes, pos: int, enc: Encoding) -> tuple[Element, int]:
    start = pos
    tag = _tag(data, pos, enc)
    if enc.explicit:
        vr_b = data[pos + 4 : pos + 6]
        if vr_b not in VALID_VRS:
            raise CoercionError(f"corrupt dataset: invalid VR {vr_b!r} at byte {pos}")
        if vr_b in LONG_VRS:
            if pos + 12 > len(data):
                raise NeedMoreBytes
            (length,) = struct.unpack_from(enc.endian + "I", data, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from(enc.endian + "H", data, pos + 6)
            pos += 8
        vr = vr_b.decode("ascii")
    else:
        (length,) = struct.unpack_from(enc.endian + "I", data, pos + 4)
        pos += 8
        vr = dictionary_vr(tag)
        if length == UNDEFINED and vr == "UN":
            vr = "SQ"  # an implicit-VR element of undefined length is a sequence
    if vr == "SQ":
        if length == UNDEFINED:
            end = skip_undefined(data, pos, enc.endian, enc.explicit)
            items = _items(data[pos : end - 8], enc)
        else:
            end = pos + length
            if end > len(data):
                raise NeedMoreBytes
            items = _items(data[pos:end], enc)
        return Element(tag, "SQ", items=items, raw=data[start:end]), end
    if length == UNDEFINED:
        # Undefined-length UN (an implicit-VR sequence) or encapsulated data: kept as is.
        implicit = vr == "UN"
        end = skip_undefined(data, pos, enc.endian, enc.explicit and not implicit)
        return Element(tag, vr, data[pos:end], raw=data[start:end]), end
    end = pos + length
    if end > len(data):
        raise NeedMoreBytes
    return Element(tag, vr, data[pos:end], raw=data[start:end]), end


def _items(data: bytes, enc: Encoding) -> list[Dataset]:
    """The items of a sequence's contents (without its delimiter)."""
    items: list[Dataset] = []
    pos = 0
    while pos + 8 <= len(data):
        tag = _tag(data, pos, enc)
        (length,) = struct.unpack_from(enc.endian + "I", data, pos + 4)
        pos += 8
        if tag == SEQ_END:
            break
        if tag != ITEM:
            raise CoercionError(f"corrupt sequence: tag {tag:08X} where an item was expected")
        if length == UNDEFINED:
            body_end = _item_end(data, pos, enc)
            items.append(_item(data[pos:body_end], enc))
            pos = body_end + 8
        else:
            items.append(_item(data[pos : pos + length], enc))
            pos += length
    return items


def _item_end(data: bytes, pos: int, enc: Encoding) -> int:
    """Where the Item Delimitation Item of an undefined-length item starts."""
    while pos + 8 <= len(data):
        tag = _tag(data, pos, enc)
        if tag == ITEM_END:
            return pos
        _, pos = _element(data, pos, enc)
    raise CoercionError("corrupt sequence: an item without its delimiter")


def _item(data: bytes, enc: Encoding) -> Dataset:
    ds = Dataset()
    pos = 0
    while pos + 8 <= len(data):
        element, pos = _element(data, pos, enc)
        ds.elements[element.tag] = element
    return ds


# -- writing ---------------------------------------------------------------------------


def encode(ds: Dataset, enc: Encoding) -> bytes:
    """The dataset's elements in tag order: original bytes where unchanged."""
    out = bytearray()
    data, spans, elements = ds.data, ds.spans, ds.elements
    for tag in ds.tags():
        if tag & 0xFFFF == 0 and tag >> 16 >= 0x0008 and tag >> 16 in ds.changed_groups:
            continue  # a retired Group Length that no longer holds (PS3.5 7.2)
        span = spans.get(tag)
        if span is not None:
            out += data[span[0] : span[2]]
            continue
        element = elements[tag]
        out += element.raw if element.raw is not None else _encode_element(element, enc)
    return bytes(out)


def _encode_element(element: Element, enc: Encoding) -> bytes:
    e = enc.endian
    if element.items is not None:
        body = bytearray()
        for item in element.items:
            content = encode(item, enc)
            body += struct.pack(e + "HHI", 0xFFFE, 0xE000, len(content)) + content
        value = bytes(body)
    else:
        value = element.value
    group, elem = element.tag >> 16, element.tag & 0xFFFF
    if not enc.explicit:
        return struct.pack(e + "HHI", group, elem, len(value)) + value
    vr = element.vr.encode("ascii")
    if vr in LONG_VRS:
        return struct.pack(e + "HH2s2xI", group, elem, vr, len(value)) + value
    if len(value) > 0xFFFE:
        raise CoercionError(f"a value of {len(value)} bytes does not fit a {element.vr} element")
    return struct.pack(e + "HH2sH", group, elem, vr, len(value)) + value
