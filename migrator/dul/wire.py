"""The bytes on the socket: P-DATA-TF fragments, gathered writes, sendfile, TLS writes,
reading whole PDUs. Shared by the association (``migrator.dul.association``); nothing
here knows about DIMSE.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
from typing import TYPE_CHECKING

from migrator.dul.pdu import P_DATA_TF, PDU_HEADER
from migrator.dul.tls import handshake_failure
from migrator.errors import ConnectError, SourceError
from migrator.netutil import quick_ack

if TYPE_CHECKING:
    import ssl

# PDU header (6 bytes) + PDV item header (4 + 2 bytes) in one struct: one iovec per fragment.
FRAGMENT_HEADER = struct.Struct(">BxIIBB")
PDV_OVERHEAD = 6  # item length field + context id + message control header
#: Upper bound on one P-DATA-TF we send when the peer sets no limit (max PDU 0).
UNLIMITED_FRAGMENT = 4 * 1024 * 1024
#: Bytes read from a file per sendmsg round: big enough to amortise syscalls, small enough
#: to keep memory flat whatever the file size.
READ_BLOCK = 1024 * 1024
IOV_MAX = 1000
#: TLS sockets have no sendmsg: buffers are joined into writes of about this size.
TLS_WRITE = 256 * 1024


def append_fragments(
    bufs: list[bytes | memoryview],
    ctx: int,
    data: memoryview,
    frag: int,
    *,
    command: bool,
    final: bool,
) -> None:
    """Split ``data`` into P-DATA-TF PDUs of one PDV each, appended as (header, data) iovecs."""
    n = len(data)
    base = 0x01 if command else 0x00
    if n == 0:
        flags = base | (0x02 if final else 0)
        bufs.append(FRAGMENT_HEADER.pack(P_DATA_TF, PDV_OVERHEAD, 2, ctx, flags))
        return
    for start in range(0, n, frag):
        piece = data[start : start + frag]
        size = len(piece)
        flags = base | (0x02 if final and start + size == n else 0)
        bufs.append(FRAGMENT_HEADER.pack(P_DATA_TF, size + PDV_OVERHEAD, size + 2, ctx, flags))
        bufs.append(piece)


def open_source(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from exc


def ssl_errors() -> tuple[type[Exception], ...]:
    """``ssl.SSLError`` once a TLS association loaded ssl; nothing to catch before (plain
    TCP commands do not import ssl: ~10 ms of start-up)."""
    mod = sys.modules.get("ssl")
    return (mod.SSLError,) if mod is not None else ()


def is_tls(sock: socket.socket) -> bool:
    mod = sys.modules.get("ssl")
    return mod is not None and isinstance(sock, mod.SSLSocket)


def sendmsg_all(sock: socket.socket, bufs: list[bytes | memoryview], flags: int = 0) -> None:
    """``sendall`` for a list of buffers: one syscall per ~1000 iovecs, partial sends resumed."""
    i = 0
    n = len(bufs)
    while i < n:
        batch = bufs[i : i + IOV_MAX]
        sent = sock.sendmsg(batch, (), flags)
        for buf in batch:
            size = len(buf)
            if sent >= size:
                sent -= size
                i += 1
            else:
                if sent:
                    bufs[i] = memoryview(buf)[sent:]
                break


def sendfile_all(
    sock: socket.socket, fd: int, offset: int, count: int, path: str, timeout: float
) -> None:
    """``count`` bytes of ``fd`` from ``offset`` onto the socket. The socket has a timeout,
    so its descriptor is non-blocking: wait for room ourselves, at most ``timeout``."""
    out = sock.fileno()
    poller: select.poll | None = None
    while count > 0:
        try:
            sent = os.sendfile(out, fd, offset, count)
        except BlockingIOError:
            if poller is None:
                poller = select.poll()
                poller.register(out, select.POLLOUT)
            if not poller.poll(timeout * 1000):
                raise TimeoutError("send timed out") from None
            continue
        if sent == 0:
            raise SourceError(f"{path} shrank while it was being sent")
        offset += sent
        count -= sent


def sendall_tls(sock: socket.socket, bufs: list[bytes | memoryview]) -> None:
    """``sendall`` of a list of buffers on a TLS socket (which has no ``sendmsg``).

    Small buffers (PDU headers) are joined with the data around them into writes of about
    ``TLS_WRITE`` bytes: one TLS record run and one syscall per write instead of one per
    header. Memory stays bounded by one write, whatever the total.
    """
    pending: list[bytes | memoryview] = []
    size = 0
    for buf in bufs:
        pending.append(buf)
        size += len(buf)
        if size >= TLS_WRITE:
            sock.sendall(b"".join(pending))
            pending, size = [], 0
    if pending:
        sock.sendall(pending[0] if len(pending) == 1 else b"".join(pending))


def tls_handshake(
    sock: socket.socket, context: ssl.SSLContext, host: str, peer: str, timeout: float
) -> ssl.SSLSocket:
    """Wrap a connected socket in TLS (closing it on failure). Raises ConnectError."""
    try:
        sock.settimeout(timeout)
        return context.wrap_socket(sock, server_hostname=host)
    except ssl_errors() as exc:
        sock.close()
        raise ConnectError(f"TLS handshake with {peer} failed: {handshake_failure(exc)}") from exc
    except TimeoutError as exc:
        sock.close()
        raise ConnectError(
            f"TLS handshake with {peer} timed out after {timeout:g}s (not a TLS port?)"
        ) from exc
    except OSError as exc:
        sock.close()
        raise ConnectError(
            f"TLS handshake with {peer} failed: {exc.strerror or exc} "
            "(the peer closed the connection: not a TLS port, or it refused us)"
        ) from exc


def recv_pdu_raw(
    sock: socket.socket, rbuf: bytearray, timeout: float, peer: str
) -> tuple[int, bytes]:
    """Read one PDU: (type, body). Raises TimeoutError, OSError or ConnectError."""
    sock.settimeout(timeout)
    while len(rbuf) < 6:
        fill(sock, rbuf, peer)
    pdu_type, length = PDU_HEADER.unpack_from(rbuf, 0)
    total = 6 + length
    while len(rbuf) < total:
        fill(sock, rbuf, peer)
    body = bytes(rbuf[6:total])
    del rbuf[:total]
    return pdu_type, body


def fill(sock: socket.socket, rbuf: bytearray, peer: str) -> None:
    # Before every read: a receiver with Nagle on holds the tail of its answer until we ACK
    # its head, and our kernel would delay that ACK ~40 ms (migrator/netutil.py).
    quick_ack(sock)
    chunk = sock.recv(262144)
    if not chunk:
        raise ConnectError(f"{peer} closed the connection")
    rbuf += chunk
