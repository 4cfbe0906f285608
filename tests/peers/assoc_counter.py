"""Associations a DICOM client opens, read from its byte stream (a TcpProxy's ``tap_each``).

Each connection's client-to-server bytes are cut into PDUs (type, reserved, 4-byte length):
an association is open from its A-ASSOCIATE-RQ (type 1) to the client's A-RELEASE-RQ (5)
or A-ABORT (7). The tap runs before the bytes are forwarded, so a release is seen before the
peer can answer it, and so before the client can open its next association: the count of
open associations never includes a closed one, however late the sockets close.

``kind`` picks the associations to count by an abstract syntax their A-ASSOCIATE-RQ
proposes (e.g. the Study Root C-GET model), so a C-FIND listing is told from the fetches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Stream:
    buffer: bytearray = field(default_factory=bytearray)
    open: bool = False


class AssociationCounter:
    def __init__(self, kind: bytes) -> None:
        self.kind = kind
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self.open_now = 0
        self.max_open = 0
        #: monotonic times of each counted A-ASSOCIATE-RQ
        self.opened: list[float] = []

    def feed(self, conn: int, data: bytes) -> None:
        with self._lock:
            stream = self._streams.setdefault(conn, _Stream())
            stream.buffer += data
            while len(stream.buffer) >= 6:
                length = int.from_bytes(stream.buffer[2:6], "big")
                if len(stream.buffer) < 6 + length:
                    break
                pdu_type = stream.buffer[0]
                body = bytes(stream.buffer[6 : 6 + length])
                del stream.buffer[: 6 + length]
                if pdu_type == 0x01 and self.kind in body and not stream.open:
                    stream.open = True
                    self.open_now += 1
                    self.max_open = max(self.max_open, self.open_now)
                    self.opened.append(time.monotonic())
                elif pdu_type in (0x05, 0x07) and stream.open:
                    stream.open = False
                    self.open_now -= 1

    def most_in_one_second(self) -> int:
        """The most associations opened within any 1 s window."""
        times = sorted(self.opened)
        best = 0
        start = 0
        for end, t in enumerate(times):
            while t - times[start] >= 1.0:
                start += 1
            best = max(best, end - start + 1)
        return best
