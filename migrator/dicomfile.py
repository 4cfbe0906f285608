"""Header-only inspection of DICOM files (PS3.10 file format, PS3.5 data encoding).

``inspect_bytes`` reads just enough of the file to send it: the File Meta group (always
Explicit VR Little Endian) and the top-level elements up to Series Instance UID. It never
touches pixel data, so it costs microseconds per file. Dataset-only files (no preamble, no
File Meta) are recognised by sniffing the first element: implicit LE, explicit LE or
explicit BE. Anything it cannot make sense of is handed to pydicom as a fallback; what
neither understands is reported with a reason, never raised past the caller as a crash.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from migrator.errors import SourceError

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

#: Bytes read for inspection first; widened when the header is longer.
HEAD_BYTES = 16 * 1024
_MAX_HEAD = 4 * 1024 * 1024

# VRs whose explicit encoding has 2 reserved bytes and a 4-byte length (PS3.5 §7.1.2).
_LONG_VRS = {
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
_VALID_VRS = _LONG_VRS | {
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
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

_WANTED = {
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x0020000D: "study_uid",
    0x0020000E: "series_uid",
}
_LAST_WANTED = 0x0020000E


class NotDicomError(SourceError):
    """The file is not DICOM, or too damaged to find what sending needs."""


class TruncatedError(SourceError):
    """DICOM that ends before its own header does: damaged, so failed rather than skipped."""


class NeedMoreBytes(Exception):
    """The header continues past the bytes read so far."""


@dataclass(frozen=True, slots=True)
class DicomHeader:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    #: Where the dataset starts: after the File Meta, or 0 for dataset-only files.
    dataset_offset: int
    size: int
    has_meta: bool


def inspect_file(path: str) -> DicomHeader:
    """Inspect a local file by reading only its header."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            want = HEAD_BYTES
            while True:
                f.seek(0)
                head = f.read(want)
                try:
                    return _inspect(head, size)
                except NeedMoreBytes:
                    if len(head) >= size or want >= _MAX_HEAD:
                        break
                    want *= 8
    except FileNotFoundError as exc:
        raise SourceError(f"{path}: vanished before it could be read") from exc
    except IsADirectoryError as exc:
        raise SourceError(f"{path}: is a directory") from exc
    except PermissionError as exc:
        raise SourceError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return _inspect_with_pydicom(path, size)


def inspect_bytes(
    data: bytes | memoryview, name: str = "<memory>", *, size: int | None = None
) -> DicomHeader:
    """Inspect DICOM bytes: a whole file, or its first bytes when ``size`` gives the total."""
    total = len(data) if size is None else size
    try:
        return _inspect(bytes(data[:_MAX_HEAD]), total)
    except NeedMoreBytes:
        pass
    import io

    return _inspect_with_pydicom(io.BytesIO(bytes(data)), total, name)


def _inspect(head: bytes, size: int) -> DicomHeader:
    if size == 0:
        raise NotDicomError("empty file (0 bytes)")
    meta: dict[int, str] = {}
    if len(head) >= 132 and head[128:132] == b"DICM":
        try:
            offset = _parse_meta(head, 132, meta)
        except NeedMoreBytes:
            if len(head) < size:
                raise
            raise TruncatedError(
                f"truncated: the file ends inside its File Meta header ({size} bytes)"
            ) from None
        has_meta = True
        ts = meta.get(0x00020010, "")
    else:
        offset, has_meta, ts = 0, False, ""
    if not ts:
        sniffed = _sniff_syntax(head, offset)
        if sniffed is None:
            if has_meta:
                raise NotDicomError(
                    "File Meta has no Transfer Syntax UID and the dataset "
                    "encoding cannot be recognised"
                )
            raise NotDicomError("not a DICOM file (no 'DICM' prefix and no recognisable dataset)")
        ts = sniffed
    if ts == DEFLATED_LE:
        raise NeedMoreBytes  # the dataset is zlib-compressed: pydicom inflates it
    try:
        found = _scan_dataset(head, offset, ts, complete=len(head) >= size)
    except NotDicomError:
        if not has_meta:
            raise
        # A dataset not encoded as its File Meta says (seen in the wild): let pydicom,
        # which tolerates that, have a go.
        raise NeedMoreBytes from None
    sop_class = found.get("sop_class_uid") or meta.get(0x00020002, "")
    sop_instance = found.get("sop_instance_uid") or meta.get(0x00020003, "")
    return _header(sop_class, sop_instance, ts, found, offset, size, has_meta)


def _header(
    sop_class: str,
    sop_instance: str,
    ts: str,
    found: dict[str, str],
    offset: int,
    size: int,
    has_meta: bool,
) -> DicomHeader:
    if not sop_class:
        raise NotDicomError("no SOP Class UID in the File Meta or the dataset")
    if not sop_instance:
        raise NotDicomError("no SOP Instance UID in the File Meta or the dataset")
    if offset > size:
        raise NotDicomError("truncated inside the File Meta header")
    return DicomHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax=ts,
        study_uid=found.get("study_uid", ""),
        series_uid=found.get("series_uid", ""),
        dataset_offset=offset,
        size=size,
        has_meta=has_meta,
    )


def _parse_meta(head: bytes, pos: int, meta: dict[int, str]) -> int:
    """Parse group 0002 (always explicit VR LE) from ``pos``; return the dataset offset."""
    while True:
        if pos + 8 > len(head):
            raise NeedMoreBytes
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return pos
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                raise NeedMoreBytes
            (length,) = struct.unpack_from("<I", head, pos + 8)
            pos += 12
        elif vr in _VALID_VRS:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            pos += 8
        else:
            raise NotDicomError(f"corrupt File Meta: invalid VR {vr!r} in (0002,{elem:04X})")
        if length == _UNDEFINED:
            raise NotDicomError("corrupt File Meta: undefined length element")
        if pos + length > len(head):
            raise NeedMoreBytes
        if elem in (0x0002, 0x0003, 0x0010):
            meta[0x00020000 | elem] = _text(head[pos : pos + length])
        pos += length


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def _sniff_syntax(head: bytes, pos: int) -> str | None:
    """Guess the encoding of a dataset from its first element (as pydicom and DCMTK do)."""
    if pos + 8 > len(head):
        return None
    vr = head[pos + 4 : pos + 6]
    group_le = struct.unpack_from("<H", head, pos)[0]
    group_be = struct.unpack_from(">H", head, pos)[0]
    # A dataset starts with a low group number (0x0002..0x0010 in practice); big-endian
    # data read little-endian gives 0x0800 for group 0x0008, which tells them apart.
    if vr in _VALID_VRS:
        if 0 < group_le <= 0x0010:
            return EXPLICIT_LE
        if 0 < group_be <= 0x0010:
            return EXPLICIT_BE
        return None
    if 0 < group_le <= 0x0010:
        (length,) = struct.unpack_from("<I", head, pos + 4)
        if length < 0x10000 or length == _UNDEFINED:
            return IMPLICIT_LE
    return None


_EXPLICIT_HDR = {"<": struct.Struct("<HH2sH"), ">": struct.Struct(">HH2sH")}
_IMPLICIT_HDR = {"<": struct.Struct("<HHI"), ">": struct.Struct(">HHI")}
_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}


def _scan_dataset(head: bytes, pos: int, ts: str, complete: bool) -> dict[str, str]:
    """Read top-level elements up to (0020,000E), skipping sequences; return wanted UIDs.

    This loop runs over every element of groups 0008-0020 (~100 in a CT header), so it
    decodes each element header with one ``unpack_from`` call.
    """
    explicit = ts != IMPLICIT_LE
    endian = ">" if ts == EXPLICIT_BE else "<"
    hdr = _EXPLICIT_HDR[endian] if explicit else _IMPLICIT_HDR[endian]
    u32 = _U32[endian]
    found: dict[str, str] = {}
    end = len(head)
    while True:
        if pos + 12 > end:
            if complete and pos >= end - 8:
                return found  # the whole file was read: a small dataset ends here
            raise NeedMoreBytes
        if explicit:
            group, elem, vr, length = hdr.unpack_from(head, pos)
            if vr in _LONG_VRS:
                length = u32.unpack_from(head, pos + 8)[0]
                pos += 12
            elif vr in _VALID_VRS:
                pos += 8
            else:
                raise NotDicomError(f"corrupt dataset: invalid VR {vr!r} at byte {pos}")
        else:
            group, elem, length = hdr.unpack_from(head, pos)
            pos += 8
        tag = (group << 16) | elem
        if tag > _LAST_WANTED:
            return found
        if length == _UNDEFINED:
            # Before pixel data, undefined length means a sequence (in implicit VR too).
            pos = _skip_undefined(head, pos, endian, explicit)
            continue
        name = _WANTED.get(tag)
        if name:
            if pos + length > end:
                raise NeedMoreBytes
            found[name] = _text(head[pos : pos + length])
        pos += length


def _element_header(head: bytes, pos: int, endian: str, explicit: bool) -> tuple[int, int]:
    if explicit:
        if pos + 8 > len(head):
            raise NeedMoreBytes
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                raise NeedMoreBytes
            (length,) = struct.unpack_from(endian + "I", head, pos + 8)
            return pos + 12, length
        if vr not in _VALID_VRS:
            raise NotDicomError(f"corrupt dataset: invalid VR {vr!r} at byte {pos}")
        (length,) = struct.unpack_from(endian + "H", head, pos + 6)
        return pos + 8, length
    (length,) = struct.unpack_from(endian + "I", head, pos + 4)
    return pos + 8, length


def _skip_undefined(head: bytes, pos: int, endian: str, explicit: bool) -> int:
    """Skip a sequence of undefined length (items may nest); return the position after it."""
    depth = 1
    end = len(head)
    while depth:
        if pos + 8 > end:
            raise NeedMoreBytes
        group, elem = struct.unpack_from(endian + "HH", head, pos)
        tag = (group << 16) | elem
        if tag in (_ITEM, _ITEM_END, _SEQ_END):
            (length,) = struct.unpack_from(endian + "I", head, pos + 4)
            pos += 8
            if tag == _SEQ_END:
                depth -= 1
            elif tag == _ITEM and length != _UNDEFINED:
                pos += length  # defined-length item: skip its contents whole
            continue
        pos, length = _element_header(head, pos, endian, explicit)
        if length == _UNDEFINED:
            depth += 1
            continue
        pos += length
    if pos > end:
        raise NeedMoreBytes
    return pos


def _inspect_with_pydicom(src: object, size: int, name: str = "") -> DicomHeader:
    """Slow path: deflated datasets, very long headers, odd encodings."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            src,  # type: ignore[arg-type]
            stop_before_pixels=True,
            specific_tags=[0x00080016, 0x00080018, 0x0020000D, 0x0020000E],
        )
    except InvalidDicomError as exc:
        raise NotDicomError(f"not a DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise NotDicomError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
    meta = ds.file_meta
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not ts:
        raise NotDicomError("no Transfer Syntax UID and the encoding cannot be recognised")
    found = {
        "sop_class_uid": str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "")),
        "sop_instance_uid": str(
            ds.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", "")
        ),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
    }
    offset = _meta_end(src) if meta else 0
    return _header(
        found["sop_class_uid"], found["sop_instance_uid"], ts, found, offset, size, bool(meta)
    )


def _meta_end(src: object) -> int:
    import pydicom.filereader as fr

    if isinstance(src, str):
        with open(src, "rb") as f:
            fr.read_preamble(f, False)
            fr._read_file_meta_info(f)
            return f.tell()
    import io

    assert isinstance(src, io.BytesIO)
    src.seek(0)
    fr.read_preamble(src, False)
    fr._read_file_meta_info(src)
    return src.tell()
