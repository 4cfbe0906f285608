"""Socket helpers: TCP_NODELAY everywhere, free ports.

Without TCP_NODELAY, the small command PDU and the dataset PDU of each C-STORE meet Nagle's
algorithm on one side and delayed ACK on the other: 40–90 ms per message on loopback.
"""

from __future__ import annotations

import socket
from typing import Any

_patched = False


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm on a TCP socket (no-op for other socket kinds)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def patch_pynetdicom_nodelay() -> None:
    """Make every pynetdicom association socket (requestor and acceptor) use TCP_NODELAY.

    pynetdicom has no option for it; wrapping ``AssociationSocket.__init__`` covers both the
    sockets it connects and the ones its server accepts.
    """
    global _patched
    if _patched:
        return
    from pynetdicom import transport

    original = transport.AssociationSocket.__init__

    def _init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.socket is not None:
            set_nodelay(self.socket)

    transport.AssociationSocket.__init__ = _init  # type: ignore[method-assign]
    _patched = True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
