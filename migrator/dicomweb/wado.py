"""WADO-RS (PS3.18 10.4) instance retrieval: the one Part-10 file of a multipart answer,
streamed to a file (never the whole instance in memory: whole-slide images are gigabytes).

The answer is ``multipart/related; type="application/dicom"; boundary=…`` with exactly one
part for an instance URL. Its bytes are written as they come, holding back only as many
bytes as the closing delimiter is long, so a delimiter split across two reads is found.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

from migrator.errors import SourceError

#: Read block (bytes) while streaming an answer.
BLOCK = 256 * 1024
#: What we ask for: the instance as the server stores it (``transfer-syntax=*``), so that a
#: migration moves the original bytes rather than a server's re-encoding.
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: Part headers are a few lines; more than this before the blank line is not a part.
MAX_PART_HEADERS = 16 * 1024


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a multipart Content-Type (None when it is not one)."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/related":
        return None
    for param in params.split(";"):
        name, _, val = param.strip().partition("=")
        if name.strip().lower() == "boundary" and val:
            return val.strip().strip('"')
    return None


def save_single_part(chunks: Iterable[bytes], boundary: str, out: BinaryIO, where: str) -> int:
    """Write the body of the one part of a multipart answer to ``out``; its length.

    Raises SourceError for an answer that is not one well-formed part (no delimiter, part
    headers that never end, a second part, no closing delimiter: a truncated answer)."""
    opening = b"--" + boundary.encode("latin-1")
    closing = b"\r\n" + opening
    buf = b""
    stream = iter(chunks)
    # 1. Up to the end of the first part's headers (preamble and headers are small).
    while True:
        start = buf.find(opening)
        if start >= 0:
            end = buf.find(b"\r\n\r\n", start)
            if end >= 0:
                buf = buf[end + 4 :]
                break
        if len(buf) > MAX_PART_HEADERS:
            raise SourceError(f"{where}: the WADO-RS answer is not multipart/related")
        chunk = next(stream, None)
        if chunk is None:
            raise SourceError(f"{where}: the WADO-RS answer holds no instance")
        buf += chunk
    # 2. The body, up to the delimiter that ends it; hold back what could start it.
    written = 0
    keep = len(closing) - 1
    while True:
        at = buf.find(closing)
        if at >= 0:
            out.write(buf[:at])
            written += at
            rest = buf[at + len(closing) :]
            break
        if len(buf) > keep:
            out.write(buf[:-keep])
            written += len(buf) - keep
            buf = buf[-keep:]
        chunk = next(stream, None)
        if chunk is None:
            raise SourceError(
                f"{where}: the WADO-RS answer ended in the middle of the instance "
                f"({written} bytes received)"
            )
        buf += chunk
    # 3. "--" ends the body; anything else after the delimiter is a second part.
    while len(rest) < 2:
        chunk = next(stream, None)
        if chunk is None:
            break
        rest += chunk
    if not rest.startswith(b"--"):
        raise SourceError(
            f"{where}: the WADO-RS answer holds more than one instance for one instance URL"
        )
    return written
