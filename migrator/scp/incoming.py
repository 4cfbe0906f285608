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
import functools
import itertools
import os
import struct
from pathlib import Path, PurePosixPath

from migrator.dicomfile.inspect import (
    DatasetUids,
    inspect_bytes,
    inspect_dataset,
    inspect_file,
)
from migrator.dul.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from migrator.scp.storage import PREAMBLE, UnsafeUIDError, resolve_under
from migrator.validation import is_valid_ae

#: Dataset bytes kept in memory to read the header from without reading the file back.
HEAD_KEPT = 64 * 1024
#: Written to the file in one call once this much is buffered...
WRITE_BLOCK = 1024 * 1024
#: ...or this many pieces (well under writev's IOV_MAX of 1024).
MAX_BUFFERS = 512
_counter = itertools.count(1)
#: This process's id for the ``.part`` names (os.getpid() is a system call each time).
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _element(tag: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":  # 4-byte length form (PS3.5 §7.1.2)
        return struct.pack("<HH2sHI", 2, tag, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, tag, vr, len(value)) + value


def meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta group (Explicit VR Little Endian), as
    ``storage.encode_meta(storage.file_meta(...))`` writes it, without pydicom: only the
    SOP Instance UID element is built per instance (~1 us), the rest once per SOP class,
    syntax and AE title."""
    before, after = _meta_parts(sop_class, transfer_syntax, source_ae)
    instance = _element(0x0003, b"UI", sop_instance.encode(), b"\x00")
    length = len(before) + len(instance) + len(after)
    return b"".join((PREAMBLE, _GROUP_LENGTH.pack(2, 0, b"UL", 4, length), before, instance, after))


_GROUP_LENGTH = struct.Struct("<HH2sHI")


@functools.lru_cache(maxsize=256)
def _meta_parts(sop_class: str, transfer_syntax: str, source_ae: str) -> tuple[bytes, bytes]:
    """The File Meta elements before and after the SOP Instance UID."""
    before = _element(0x0001, b"OB", b"\x00\x01", b"\x00") + _element(
        0x0002, b"UI", sop_class.encode(), b"\x00"
    )
    after = (
        _element(0x0010, b"UI", transfer_syntax.encode(), b"\x00")
        + _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode(), b"\x00")
        + _element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode(), b" ")
    )
    if source_ae and is_valid_ae(source_ae):
        after += _element(0x0016, b"AE", source_ae.encode(), b" ")
    return before, after


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

    def place(
        self, tmp: str, parts: tuple[str, ...], *, again: bool = True, check: bool = True
    ) -> tuple[str, bool]:
        """Rename ``tmp`` to root/``parts`` (``storage.relative_parts``); (final path,
        whether it replaced a file: only looked at with ``check``)."""
        parent = "/".join((self._root, *parts[:-1])) if len(parts) > 1 else self._root
        if parent not in self._safe:
            final = resolve_under(self.root, PurePosixPath(*parts))
            final.parent.mkdir(parents=True, exist_ok=True)
            # Re-check after mkdir: a directory created concurrently could be a symlink.
            resolve_under(self.root, PurePosixPath(final.relative_to(self.root)))
            self._safe.add(parent)
        final_name = f"{parent}/{parts[-1]}"
        replaced = check and os.path.lexists(final_name)
        try:
            os.replace(tmp, final_name)
        except FileNotFoundError:
            # The directory went away since it was checked (someone cleared the output
            # while we run): check and create it again, once.
            self._safe.discard(parent)
            if not again or not os.path.exists(tmp):
                raise
            return self.place(tmp, parts, again=False, check=check)
        return final_name, replaced


class IncomingFile:
    """The ``.part`` file of one C-STORE: meta written at once, dataset appended."""

    def __init__(
        self,
        root: str,
        sop_instance: str,
        meta: bytes,
        *,
        syntax: str = "",
    ) -> None:
        self.path = f"{root}/.{sop_instance}.{_pid}.{next(_counter)}.part"
        # 0o666 minus the umask, as any file the user creates (mkstemp's 0600 is not).
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        self._meta = meta
        #: the dataset's transfer syntax ("": read it from the meta)
        self._syntax = syntax
        self._sop_instance = sop_instance
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
        # writev takes at most IOV_MAX (1024) buffers: small PDVs (--max-pdu 1024, or a
        # peer sending a byte at a time) fill the list long before the block size.
        if self._pending_size >= WRITE_BLOCK or len(self._pending) >= MAX_BUFFERS:
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

    def header(self) -> DatasetUids:
        """The UIDs of the file as written (our File Meta names the transfer syntax, which
        a deflated dataset needs): read from memory when the dataset's header is there."""
        head = bytes(self._head)
        whole = self.size <= len(head)
        if self._syntax:
            meta = (len(self._meta), self._sop_instance)
            # Past the bytes kept, the damage checks read the file: a few small reads.
            with _FileReader(self.path, len(self._meta)) as read:
                found = inspect_dataset(head, self.size, self._syntax, meta, read)
            if found is not None:
                return found
        path = self.path
        header = inspect_bytes(self._meta + head, path) if whole else inspect_file(path)
        return DatasetUids(
            header.sop_instance_uid, header.study_uid, header.series_uid, header.size
        )

    def discard(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._pending = []
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class _FileReader:
    """Positioned reads of a dataset written after ``meta_size`` bytes of File Meta; the
    file is opened at the first read (most datasets need none) and once only."""

    def __init__(self, path: str, meta_size: int) -> None:
        self._path = path
        self._meta_size = meta_size
        self._fd = -1

    def __call__(self, offset: int, n: int) -> bytes:
        if self._fd < 0:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(self._fd, n, self._meta_size + offset)

    def __enter__(self) -> _FileReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


__all__ = ["IncomingFile", "Placer", "UnsafeUIDError", "meta_bytes"]
