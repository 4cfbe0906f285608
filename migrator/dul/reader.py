"""Reading PDUs from an untrusted peer, in bounded pieces (the receiving side).

The requestor reads whole answers (``wire.recv_pdu_raw``: they are small and come from the
PACS it chose). A receiver reads what anyone sends: a PDU header is checked before its body
is read, a P-DATA-TF is walked PDV by PDV and its data handed on in pieces of at most
``CHUNK`` bytes as they arrive, so neither a big dataset nor a lying length puts more than a
receive buffer in memory.

Three clocks (PS3.8 §9.1.5 ARTIM and the idle timer of a real acceptor):

* ``deadline``: an absolute time by which the whole A-ASSOCIATE-RQ must be in (set by the
  acceptor until it is): a peer trickling a byte a second cannot extend it;
* ``idle``: how long to wait for the first byte of the next PDU;
* ``stall``: how long any later read inside a PDU may wait.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

from migrator.dul.pdu import P_DATA_TF
from migrator.netutil import quick_ack

#: Bytes asked of the kernel per read.
RECV = 256 * 1024
#: The largest piece of dataset handed on at once.
CHUNK = 1024 * 1024
_PDU_HEAD = struct.Struct(">BxI")
_MSG_DONTWAIT: int | None = getattr(socket, "MSG_DONTWAIT", None)


def _timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO/SO_SNDTIMEO (0 would mean no timeout)."""
    micros = max(1000, int(seconds * 1e6))
    return struct.pack("ll", micros // 1_000_000, micros % 1_000_000)


class PeerClosed(ConnectionError):
    """The peer closed the connection (end of file)."""


class HandshakeExpired(TimeoutError):
    """The association request was not complete by its deadline."""


class Idle(TimeoutError):
    """No PDU began within the idle time."""


class Stalled(TimeoutError):
    """The peer stopped in the middle of a PDU."""


class PduReader:
    def __init__(self, sock: socket.socket, *, idle: float, stall: float) -> None:
        self.sock = sock
        self.idle = idle
        self.stall = stall
        self.deadline: float | None = None
        self._data = b""
        self._pos = 0
        self._timeout: float | None = None
        # A plain TCP socket is read in blocking mode with its timeouts in the kernel
        # (SO_RCVTIMEO, SO_SNDTIMEO for our answers): a read that finds data waiting is
        # then one system call, where Python's own timeouts poll first, every read (a
        # 0.5 MB dataset arrives in some twenty reads). TLS sockets keep Python's.
        self._kernel = type(sock) is socket.socket and _MSG_DONTWAIT is not None
        if self._kernel:
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(stall))

    def buffered(self) -> int:
        return len(self._data) - self._pos

    def _fill(self, wait: float, idle: bool) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise HandshakeExpired()
            wait = min(wait, left)
        chunk = self._waiting() if self._kernel else None
        if chunk is None:
            if wait != self._timeout:  # a timeout costs syscalls: only when it changes
                if self._kernel:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(wait))
                else:
                    self.sock.settimeout(wait)
                self._timeout = wait
            # A sender with Nagle on holds the dataset PDU until its command PDU is ACKed:
            # ACK at once, not after the kernel's ~40 ms delay (migrator/netutil.py).
            quick_ack(self.sock)
            try:
                chunk = self.sock.recv(RECV)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: SO_RCVTIMEO ran out
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise HandshakeExpired() from None
                raise (Idle() if idle else Stalled()) from None
        if not chunk:
            raise PeerClosed("the peer closed the connection")
        self._data = self._data[self._pos :] + chunk if self._pos < len(self._data) else chunk
        self._pos = 0

    def _waiting(self) -> bytes | None:
        """What the kernel holds for us already (b"": the peer closed), None if nothing."""
        assert _MSG_DONTWAIT is not None
        try:
            return self.sock.recv(RECV, _MSG_DONTWAIT)
        except BlockingIOError:
            return None

    def p_data(self, limit: int | None) -> memoryview | None:
        """The body of the next PDU when it is a P-DATA-TF of at most ``limit`` bytes
        that is all in already (then consumed); else None and nothing consumed. The
        receiver's quick way from one P-DATA-TF to the next."""
        pos = self._pos
        data = self._data
        if len(data) - pos < 6:
            return None
        pdu_type, length = _PDU_HEAD.unpack_from(data, pos)
        if pdu_type != P_DATA_TF or (limit is not None and length > limit):
            return None
        start = pos + 6
        if len(data) - start < length:
            return None
        self._pos = start + length
        return memoryview(data)[start : start + length]

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes (``n`` small: headers, commands, bounded PDUs)."""
        while len(self._data) - self._pos < n:
            self._fill(self.stall, False)
        start = self._pos
        self._pos += n
        return memoryview(self._data)[start : start + n]

    def view(self, n: int) -> memoryview | None:
        """The next ``n`` bytes when they are all in already (then consumed), else None
        and nothing consumed: the receiver's quick way through a whole P-DATA-TF."""
        start = self._pos
        if len(self._data) - start < n:
            return None
        self._pos = start + n
        return memoryview(self._data)[start : start + n]

    def header(self) -> tuple[int, int]:
        """The next PDU's (type, length): waits ``idle`` for its first byte."""
        if self._pos >= len(self._data):
            self._fill(self.idle, True)
        head = self.take(6)
        return head[0], int.from_bytes(head[2:6], "big")

    def pieces(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes in pieces of at most ``CHUNK``, each as soon as it is in."""
        while n > 0:
            if self._pos >= len(self._data):
                self._fill(self.stall, False)
            size = min(n, len(self._data) - self._pos, CHUNK)
            start = self._pos
            self._pos += size
            n -= size
            yield memoryview(self._data)[start : start + size]

    def skip(self, n: int) -> None:
        for _ in self.pieces(n):
            pass
