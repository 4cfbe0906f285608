"""Reading a file's header region, and a spliced payload's bytes when they must be whole.

The region is read with ``os.pread`` (a few hundred bytes for the usual rules, more when a
rule reaches further); the rest of the file is never read here: the sender streams it.
"""

from __future__ import annotations

import os

from migrator.dicomfile import DicomHeader
from migrator.sources.base import Payload

#: First read of the region; grown (x4) while the region goes on
FIRST_READ = 4096


class RegionReader:
    """Reads ``[start, start + n)`` of the payload; ``at_end``: nothing lies beyond."""

    def __init__(self, header: DicomHeader, payload: Payload) -> None:
        self.payload = payload
        self.start = header.dataset_offset
        self.size = header.size if payload.data is None else len(payload.data)

    def read(self, n: int) -> tuple[bytes, bool]:
        end = min(self.size, self.start + n)
        if self.payload.data is not None:
            data = self.payload.data[self.start : end]
        else:
            assert self.payload.path is not None
            fd = os.open(self.payload.path, os.O_RDONLY)
            try:
                data = os.pread(fd, end - self.start, self.start)
            finally:
                os.close(fd)
        return data, end >= self.size


def spliced(header: DicomHeader, payload: Payload) -> bytes:
    """The whole coerced file in memory (File Meta as stored, new head, the rest): for the
    rare file that must be re-encoded after coercion."""
    assert payload.head is not None
    if payload.data is not None:
        data = payload.data
        return data[: header.dataset_offset] + payload.head + data[payload.resume :]
    assert payload.path is not None
    with open(payload.path, "rb") as f:
        meta = f.read(header.dataset_offset)
        f.seek(payload.resume)
        rest = f.read()
    return meta + payload.head + rest
