"""Socket helpers: TCP_NODELAY everywhere, quick ACKs before every read, free ports.

Without TCP_NODELAY, the small command PDU and the dataset PDU of each C-STORE meet Nagle's
algorithm on one side and delayed ACK on the other: 40–90 ms per message on loopback.

We set TCP_NODELAY on our own sockets, but most PACS ship with Nagle on (stock DCMTK
``storescp`` without ``TCP_NODELAY=1`` in its environment, stock Orthanc): a receiver that
writes its C-STORE response in two segments holds the second until its first is ACKed, and
our kernel delays that ACK (~40 ms on Linux): ~22 files/s per association. ``quick_ack``
asks the kernel (Linux's TCP_QUICKACK) to ACK at once what arrives, and ACKs what is
pending; the kernel leaves quick-ACK mode again on its own, so it is re-armed before every
read of an answer. Elsewhere (no TCP_QUICKACK) it does nothing: such systems delay ACKs
less, or the PACS must disable Nagle itself (docs/deploy.md).
"""

from __future__ import annotations

import socket
from typing import Any

_patched = False
#: Linux only (absent from the socket module elsewhere).
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm on a TCP socket (no-op for other socket kinds)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def quick_ack(sock: socket.socket) -> None:
    """ACK at once what arrives next (and what is waiting for an ACK now): call before each
    read of a peer's answer. One setsockopt (~1 us); also on TLS sockets (the option is on
    the TCP socket underneath). A no-op where the system has no TCP_QUICKACK."""
    if _QUICKACK is None:
        return
    try:  # noqa: SIM105 - once per read: no context manager to build each time
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        pass  # not a TCP socket, or already closed: the read that follows says what is wrong


def patch_pynetdicom_nodelay() -> None:
    """Make every pynetdicom association socket (requestor and acceptor) use TCP_NODELAY
    and re-arm quick ACKs before each read (``quick_ack``).

    pynetdicom has no option for either; wrapping ``AssociationSocket.__init__`` covers both
    the sockets it connects and the ones its server accepts, and wrapping its ``recv`` (a
    PDU header, then its body) covers every read.
    """
    global _patched
    if _patched:
        return
    from pynetdicom import transport

    original = transport.AssociationSocket.__init__
    original_recv = transport.AssociationSocket.recv

    def _init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.socket is not None:
            set_nodelay(self.socket)

    def _recv(self: Any, nr_bytes: int) -> bytearray:
        if self.socket is not None:
            quick_ack(self.socket)
        return original_recv(self, nr_bytes)

    transport.AssociationSocket.__init__ = _init  # type: ignore[method-assign]
    transport.AssociationSocket.recv = _recv  # type: ignore[method-assign]
    _patched = True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
