"""One instance on its way to disk: File Meta first, then the dataset as it arrives.

The C-STORE request names the SOP Class, the SOP Instance (checked to be a valid UID
before anything is written) and, through its presentation context, the transfer syntax:
all a File Meta group needs (PS3.10 §7.1). So the file is written once, in its final form,
to a hidden ``.<SOP>.<n>.part`` in the output directory while the PDVs come in; when the
dataset is complete its header is read (from memory for a small instance), its UIDs
checked, and the file renamed to ``<Study>/<Series>/<SOP>.dcm`` (same file system: an
atomic rename, no copy). A dataset that is cut off or refused leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
from pathlib import Path, PurePosixPath

from migrator.dicomfile.header import DicomHeader
from migrator.dicomfile.inspect import inspect_bytes, inspect_file
from migrator.dul.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from migrator.scp.storage import PREAMBLE, UnsafeUIDError, resolve_under
from migrator.validation import is_valid_ae

#: Dataset bytes kept in memory to read the header from without reading the file back.
HEAD_KEPT = 64 * 1024
#: Written to the file in one call once this much is buffered.
WRITE_BLOCK = 1024 * 1024
_counter = itertools.count(1)


def _element(tag: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":  # 4-byte length form (PS3.5 §7.1.2)
        return struct.pack("<HH2sHI", 2, tag, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, tag, vr, len(value)) + value


def meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta group (Explicit VR Little Endian), as
    ``storage.encode_meta(storage.file_meta(...))`` writes it, without pydicom (~3 us)."""
    body = (
        _element(0x0001, b"OB", b"\x00\x01", b"\x00")
        + _element(0x0002, b"UI", sop_class.encode(), b"\x00")
        + _element(0x0003, b"UI", sop_instance.encode(), b"\x00")
        + _element(0x0010, b"UI", transfer_syntax.encode(), b"\x00")
        + _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode(), b"\x00")
        + _element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode(), b" ")
    )
    if source_ae and is_valid_ae(source_ae):
        body += _element(0x0016, b"AE", source_ae.encode(), b" ")
    return PREAMBLE + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body


class Placer:
    """Moves finished files into the output tree, checking each directory once.

    A directory proven to resolve inside the output directory is remembered: the UIDs that
    name it are syntactically valid (no ``/``, ``..``), so only a symlink planted in the
    tree could lead elsewhere, and that is checked the first time a directory is used.
    The final name itself is replaced with ``os.replace``, which never follows a symlink.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._root = str(self.root)
        self._safe: set[str] = set()

    def place(self, tmp: str, rel: PurePosixPath, *, again: bool = True) -> tuple[str, bool]:
        """Rename ``tmp`` to root/rel; (final path, whether it replaced a file)."""
        parent = os.path.join(self._root, *rel.parts[:-1])
        if parent not in self._safe:
            final = resolve_under(self.root, rel)
            final.parent.mkdir(parents=True, exist_ok=True)
            # Re-check after mkdir: a directory created concurrently could be a symlink.
            resolve_under(self.root, PurePosixPath(final.relative_to(self.root)))
            self._safe.add(parent)
        final_name = os.path.join(parent, rel.parts[-1])
        replaced = os.path.lexists(final_name)
        try:
            os.replace(tmp, final_name)
        except FileNotFoundError:
            # The directory went away since it was checked (someone cleared the output
            # while we run): check and create it again, once.
            self._safe.discard(parent)
            if not again or not os.path.exists(tmp):
                raise
            return self.place(tmp, rel, again=False)
        return final_name, replaced


class IncomingFile:
    """The ``.part`` file of one C-STORE: meta written at once, dataset appended."""

    def __init__(self, root: str, sop_instance: str, meta: bytes) -> None:
        self.path = os.path.join(root, f".{sop_instance}.{os.getpid()}.{next(_counter)}.part")
        # 0o666 minus the umask, as any file the user creates (mkstemp's 0600 is not).
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        self._meta = meta
        self._pending: list[bytes | memoryview] = [meta]
        self._pending_size = len(meta)
        self._head = bytearray()
        self.size = 0  # dataset bytes received

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        if len(self._head) < HEAD_KEPT:
            self._head += data[: HEAD_KEPT - len(self._head)]
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= WRITE_BLOCK:
            self._flush()

    def _flush(self) -> None:
        bufs, self._pending, self._pending_size = self._pending, [], 0
        total = sum(len(b) for b in bufs)
        written = os.writev(self._fd, bufs)
        if written < total:  # short write (a signal, a nearly full disk): write the rest
            rest = b"".join(bytes(b) for b in bufs)[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]

    def close(self) -> None:
        """Everything received is in the file (raises OSError: disk full...)."""
        try:
            self._flush()
        finally:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)

    def header(self) -> DicomHeader:
        """The header of the file as written (our File Meta names the transfer syntax, which
        a deflated dataset needs): read from memory when the whole dataset is there."""
        if self.size <= len(self._head):
            return inspect_bytes(self._meta + bytes(self._head), self.path)
        return inspect_file(self.path)

    def discard(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._pending = []
        with contextlib.suppress(OSError):
            os.unlink(self.path)


__all__ = ["IncomingFile", "Placer", "UnsafeUIDError", "meta_bytes"]
