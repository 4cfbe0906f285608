"""Reading just enough of a DICOM file to send it: ``inspect_file`` and ``inspect_bytes``.

``inspect_bytes`` reads just enough of the file to send it: the File Meta group (always
Explicit VR Little Endian) and the top-level elements up to Series Instance UID (on the way:
the Accession Number and Modality, for reports). It never
reads pixel data, so it costs microseconds per file. Dataset-only files (no preamble, no
File Meta) are recognised by sniffing the first element: implicit LE, explicit LE or
explicit BE. Anything it cannot make sense of is handed to pydicom as a fallback; what
neither understands is reported with a reason, never raised past the caller as a crash.

``inspect_file`` reads a local file with ``os.pread`` and says why a path that is not a
regular file (a folder, a pipe, a broken link) cannot be read. The rest of the header, up to
Pixel Data, is then checked for damage (:mod:`migrator.dicomfile.damage`).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from typing import NamedTuple

from migrator.dicomfile.damage import check_rest
from migrator.dicomfile.encoding import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_HDR,
    EXPLICIT_LE,
    IMPLICIT_HDR,
    IMPLICIT_LE,
    LONG_VRS,
    NATIVE,
    SYNTAX_NAMES,
    U32,
    UNDEFINED,
    VALID_VRS,
    NeedMoreBytes,
    Reader,
    skip_undefined,
    tag_str,
    text,
)
from migrator.dicomfile.fallback import inspect_with_pydicom
from migrator.dicomfile.header import (
    DicomHeader,
    NotDicomError,
    TruncatedError,
    build_header,
)
from migrator.errors import SourceError

#: Bytes read for inspection first; widened when the header is longer.
HEAD_BYTES = 16 * 1024
_MAX_HEAD = 4 * 1024 * 1024

_WANTED = {
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    # For the planner's --order (newest-study-first); on the way to the UIDs.
    0x00080020: "study_date",
    # For the report's per-study table; read on the way to the UIDs (same group order).
    0x00080050: "accession",
    0x00080060: "modality",
    # For the planner's --priority-list (never stored in the plan nor logged).
    0x00100020: "patient_id",
    0x0020000D: "study_uid",
    0x0020000E: "series_uid",
}
_LAST_WANTED = 0x0020000E
#: What a receiver needs of a dataset: the UIDs that name its file (``inspect_dataset``).
_RECEIVED = {
    tag: name
    for tag, name in _WANTED.items()
    if name in ("sop_instance_uid", "study_uid", "series_uid")
}


class _PastEnd(NeedMoreBytes):
    """An element runs past the end of the bytes: more to read, or the file is cut."""

    def __init__(self, tag: int) -> None:
        super().__init__(tag)
        self.tag = tag


def inspect_file(path: str) -> DicomHeader:
    """Inspect a local file by reading only its header (and, for encapsulated pixel data,
    its last 8 bytes). Raises ``NotDicomError`` (skip), ``DamagedError`` (fail) or another
    ``SourceError`` (cannot be read: fail)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _stat_error(path, exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    try:
        # O_NONBLOCK: a file swapped for a named pipe since the stat must not block us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(path, exc) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        size = st.st_size

        def read(offset: int, n: int) -> bytes:
            return os.pread(fd, n, offset)

        want = HEAD_BYTES
        while True:
            head = os.pread(fd, want, 0)
            try:
                return _inspect(head, size, read)
            except NeedMoreBytes:
                if len(head) >= size or want >= _MAX_HEAD:
                    break
                want *= 8
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return inspect_with_pydicom(path, size)


def _stat_error(path: str, exc: OSError) -> SourceError:
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return SourceError(f"broken symbolic link: its target {target} does not exist")
    if exc.errno == errno.ENOENT:
        return SourceError("vanished before it could be read")
    if exc.errno == errno.ELOOP:
        return SourceError("symbolic link loop: the link leads back to itself")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SourceError("cannot open: permission denied")
    return SourceError(f"cannot read: {exc.strerror or exc}")


def _open_error(path: str, exc: OSError) -> SourceError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SourceError("cannot open: permission denied")
    if exc.errno in (errno.ENOENT, errno.ELOOP):
        return _stat_error(path, exc)
    return SourceError(f"cannot open: {exc.strerror or exc}")


def _not_regular(path: str, mode: int) -> SourceError:
    if stat.S_ISDIR(mode):
        if os.path.islink(path):
            return NotDicomError(
                "symbolic link to a folder: not followed (a linked folder can lead back to "
                "itself or list files twice); give the folder itself to send what it holds"
            )
        try:
            with os.scandir(path):
                pass
        except OSError as exc:
            return SourceError(
                f"a folder that cannot be listed ({exc.strerror or exc}): nothing in it was sent"
            )
        return SourceError("is a directory, not a file")
    kinds = (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), f"file type {mode:o}")
    return NotDicomError(f"not a regular file: {kind}; not read")


def _in_memory(data: bytes | memoryview) -> Reader:
    """Positioned reads of bytes all in memory (the damage checks' walk past the head)."""
    view = memoryview(data)

    def read(offset: int, n: int) -> bytes:
        return bytes(view[offset : offset + n])

    return read


def inspect_bytes(
    data: bytes | memoryview, name: str = "<memory>", *, size: int | None = None
) -> DicomHeader:
    """Inspect DICOM bytes: a whole file, or its first bytes when ``size`` gives the total."""
    total = len(data) if size is None else size
    read = _in_memory(data) if len(data) >= total else None

    try:
        return _inspect(bytes(data[:_MAX_HEAD]), total, read)
    except NeedMoreBytes:
        pass
    import io

    return inspect_with_pydicom(io.BytesIO(bytes(data)), total, name)


class DatasetUids(NamedTuple):
    """What a receiver needs of a dataset it was sent (``inspect_dataset``)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    #: bytes of the file written: its File Meta, then the dataset
    size: int


def inspect_dataset(
    data: bytes,
    size: int,
    ts: str,
    meta: tuple[int, str],
    read: Reader | None = None,
) -> DatasetUids | None:
    """The UIDs of a received dataset whose transfer syntax is known (a C-STORE's
    presentation context): ``data`` holds its first bytes (all of them when ``size`` is
    ``len(data)``); ``meta`` is the File Meta written before it: (its length, its SOP
    Instance UID, which stands in for the dataset's when it has none, as in a file's
    header). The same damage checks run as for a file: in memory when ``data`` is the
    whole dataset, through ``read`` past it (without ``read`` they stop there). None when
    only the general path can tell (a deflated dataset, one not encoded as its syntax says,
    one whose header goes past ``data``): the caller then inspects the whole file.
    """
    if ts == DEFLATED_LE or not data:
        return None
    complete = len(data) >= size
    if complete:
        read = _in_memory(data)
    try:
        found, rest = _scan_dataset(data, 0, ts, complete, _RECEIVED)
    except (NotDicomError, NeedMoreBytes):
        return None
    check_rest(data, rest, size, ts, read)
    meta_size, sop_instance = meta
    return DatasetUids(
        found.get("sop_instance_uid") or sop_instance,
        found.get("study_uid", ""),
        found.get("series_uid", ""),
        meta_size + size,
    )


def _inspect(head: bytes, size: int, read: Reader | None = None) -> DicomHeader:
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
    note = ""
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
        how = f"its encoding, {SYNTAX_NAMES[ts]}, was recognised from the data"
        if has_meta:
            note = f"the File Meta has no Transfer Syntax UID; {how}"
        else:
            note = f"no File Meta (a bare dataset, without preamble, 'DICM' or group 0002); {how}"
    if ts == DEFLATED_LE:
        raise NeedMoreBytes  # the dataset is zlib-compressed: pydicom inflates it
    complete = len(head) >= size
    try:
        found, rest = _scan_dataset(head, offset, ts, complete=complete)
    except NotDicomError:
        if not has_meta:
            raise
        # A dataset not encoded as its File Meta says (seen in the wild): let pydicom,
        # which tolerates that, have a go.
        raise NeedMoreBytes from None
    except _PastEnd as exc:
        if not complete or not _encoding_agrees(head, offset, ts):
            raise NeedMoreBytes from None
        raise TruncatedError(
            f"truncated: the file ends inside element {tag_str(exc.tag)}, before the end of "
            f"its header ({size} bytes)"
        ) from None
    sop_class = found.get("sop_class_uid") or meta.get(0x00020002, "")
    sop_instance = found.get("sop_instance_uid") or meta.get(0x00020003, "")
    header = build_header(sop_class, sop_instance, ts, found, offset, size, has_meta, note)
    check_rest(head, rest, size, ts, read)
    return header


def _encoding_agrees(head: bytes, offset: int, ts: str) -> bool:
    """Whether the dataset's first element is encoded as ``ts`` says (so that an element
    running past the end means the file was cut, not that we misread its encoding)."""
    sniffed = _sniff_syntax(head, offset)
    if sniffed is None:
        return False
    if ts not in NATIVE:
        return sniffed == EXPLICIT_LE  # every other syntax is explicit VR little endian
    return sniffed == ts


def _parse_meta(head: bytes, pos: int, meta: dict[int, str]) -> int:
    """Parse group 0002 (always explicit VR LE) from ``pos``; return the dataset offset."""
    while True:
        if pos + 8 > len(head):
            raise NeedMoreBytes
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return pos
        vr = head[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(head):
                raise NeedMoreBytes
            (length,) = struct.unpack_from("<I", head, pos + 8)
            pos += 12
        elif vr in VALID_VRS:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            pos += 8
        else:
            raise NotDicomError(f"corrupt File Meta: invalid VR {vr!r} in (0002,{elem:04X})")
        if length == UNDEFINED:
            raise NotDicomError("corrupt File Meta: undefined length element")
        if pos + length > len(head):
            raise NeedMoreBytes
        if elem in (0x0002, 0x0003, 0x0010):
            meta[0x00020000 | elem] = text(head[pos : pos + length])
        pos += length


def _sniff_syntax(head: bytes, pos: int) -> str | None:
    """Guess the encoding of a dataset from its first element (as pydicom and DCMTK do)."""
    if pos + 8 > len(head):
        return None
    vr = head[pos + 4 : pos + 6]
    group_le = struct.unpack_from("<H", head, pos)[0]
    group_be = struct.unpack_from(">H", head, pos)[0]
    # A dataset starts with a low group number (0x0002..0x0010 in practice); big-endian
    # data read little-endian gives 0x0800 for group 0x0008, which tells them apart.
    if vr in VALID_VRS:
        if 0 < group_le <= 0x0010:
            return EXPLICIT_LE
        if 0 < group_be <= 0x0010:
            return EXPLICIT_BE
        return None
    if 0 < group_le <= 0x0010:
        (length,) = struct.unpack_from("<I", head, pos + 4)
        if length < 0x10000 or length == UNDEFINED:
            return IMPLICIT_LE
    return None


def _scan_dataset(
    head: bytes, pos: int, ts: str, complete: bool, wanted: dict[int, str] = _WANTED
) -> tuple[dict[str, str], int]:
    """Read top-level elements up to (0020,000E), skipping sequences; return the wanted UIDs
    and where the first element after them starts.

    This loop runs over every element of groups 0008-0020 (~100 in a CT header), so it
    decodes each element header with one ``unpack_from`` call. Raises ``_PastEnd`` when an
    element runs past the bytes given: read more, or, when they are the whole file
    (``complete``), the file was cut.
    """
    explicit = ts != IMPLICIT_LE
    endian = ">" if ts == EXPLICIT_BE else "<"
    hdr = EXPLICIT_HDR[endian] if explicit else IMPLICIT_HDR[endian]
    u32 = U32[endian]
    found: dict[str, str] = {}
    end = len(head)
    tag = 0
    while True:
        if pos + 8 > end:
            if complete and pos <= end:
                return found, pos  # the whole file was read: a small dataset ends here
            raise _PastEnd(tag)
        start = pos
        if explicit:
            group, elem, vr, length = hdr.unpack_from(head, pos)
            if vr in LONG_VRS:
                if pos + 12 > end:
                    raise _PastEnd((group << 16) | elem)
                length = u32.unpack_from(head, pos + 8)[0]
                pos += 12
            elif vr in VALID_VRS:
                pos += 8
            else:
                raise NotDicomError(f"corrupt dataset: invalid VR {vr!r} at byte {pos}")
        else:
            group, elem, length = hdr.unpack_from(head, pos)
            pos += 8
        tag = (group << 16) | elem
        if tag > _LAST_WANTED:
            return found, start
        if length == UNDEFINED:
            # Before pixel data, undefined length means a sequence (in implicit VR too).
            try:
                pos = skip_undefined(head, pos, endian, explicit)
            except NeedMoreBytes:
                raise _PastEnd(tag) from None
            continue
        name = wanted.get(tag)
        if name:
            if pos + length > end:
                raise _PastEnd(tag)
            found[name] = text(head[pos : pos + length])
        pos += length
