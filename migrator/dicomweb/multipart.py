"""A STOW-RS request body: ``multipart/related; type="application/dicom"``, one part per
Part-10 file, streamed from the files.

The body is an iterator of chunks whose total length is known before the first byte goes
out (``Content-Length``: servers such as Orthanc's plugin handle it better than chunked
uploads), so a request of 16 files never holds more than one read block in memory. A file
without File Meta (a dataset-only file, which C-STORE sends as is) gets one generated in
front of it: STOW-RS takes Part-10 files only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

from migrator.dicomfile import DicomHeader
from migrator.sources.base import Payload

#: Read block while streaming a file into the request (one block in memory at a time).
BLOCK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Part:
    """One file of a request: ``prefix`` (a generated File Meta, or b"") then ``length``
    bytes from ``offset`` of ``path`` (or of ``data``)."""

    prefix: bytes
    path: str | None
    data: bytes | None
    offset: int
    length: int

    @classmethod
    def of(cls, header: DicomHeader, payload: Payload) -> Part:
        if payload.head is not None:
            # Coerced: a File Meta of the header as sent (its UIDs may have changed), the
            # rewritten elements, then the file's own bytes from where they stop.
            offset, prefix = payload.resume, file_meta(header) + payload.head
        elif header.has_meta:
            offset, prefix = 0, b""  # the file as stored, File Meta included
        else:
            offset, prefix = header.dataset_offset, file_meta(header)
        if payload.path is not None:
            # header.size: the file as re-inspected just before sending (transfer.reinspect)
            return cls(prefix, payload.path, None, offset, header.size - offset)
        assert payload.data is not None
        return cls(prefix, None, payload.data, offset, len(payload.data) - offset)

    @property
    def size(self) -> int:
        return len(self.prefix) + self.length

    def chunks(self) -> Iterator[bytes]:
        if self.prefix:
            yield self.prefix
        if self.data is not None:
            yield memoryview(self.data)[self.offset : self.offset + self.length].tobytes()
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.length
            while left > 0:
                block = f.read(min(BLOCK, left))
                if not block:  # shorter than when it was staged: the length is promised
                    raise OSError(f"{self.path} shrank while it was being sent")
                left -= len(block)
                yield block


class Body:
    """The multipart body of several parts, with its length and content type."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self.boundary = f"migrator-{uuid.uuid4().hex}"
        self._head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._tail = f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __len__(self) -> int:
        per_part = len(self._head) + 2  # + CRLF before the next delimiter
        return sum(p.size + per_part for p in self.parts) + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            yield self._head
            yield from part.chunks()
            yield b"\r\n"
        yield self._tail


def file_meta(header: DicomHeader) -> bytes:
    """Preamble, ``DICM`` and a File Meta group for a dataset-only file."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID

    from migrator.dul.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(header.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(header.sop_instance_uid)
    meta.TransferSyntaxUID = UID(header.transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    out = BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()
