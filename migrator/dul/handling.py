"""What a receiving side's handler sees of an association (``migrator.dul.acceptor``).

``serve`` runs the protocol; a ``Handler`` decides: whether to admit the association,
the status of each C-ECHO, where each C-STORE's dataset goes (a ``StoreSink``) and what
is answered (a ``StoreOutcome``), and it hears once how the association ended (``End``).
``Accepted`` is the association as the handler sees it.
"""

from __future__ import annotations

import contextlib
import enum
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from migrator.dul.acse import AcceptedContext, AssociateRQ
from migrator.dul.pdu import ProposedContext, encode_abort

#: ``ended``'s text for a rejection the handler's ``admit`` decided (and logged)
BY_HANDLER = "rejected by the handler"


class End(enum.Enum):
    RELEASED = "released"
    PEER_ABORTED = "aborted by the peer"
    ABORTED = "aborted by us"  # handler's or stop()'s abort
    REJECTED = "rejected"
    HANDSHAKE = "no association request in time"
    IDLE = "idle"
    STALLED = "stalled mid-PDU"
    CLOSED = "connection closed"
    PROTOCOL = "protocol error"


class AbortAssociation(Exception):
    """Raised by a handler to end the association with an A-ABORT (no answer sent)."""


class StoreRequest(NamedTuple):  # a tuple: built for every C-STORE (a frozen dataclass
    # sets each field through object.__setattr__)
    message_id: int
    sop_class: str
    sop_instance: str
    context: AcceptedContext
    #: C-MOVE sub-operations (PS3.7 §9.1.1.1): who asked for the move, and its message id
    move_originator_ae: str = ""
    move_originator_message_id: int | None = None


class StoreOutcome(NamedTuple):
    status: int
    comment: str = ""
    #: Run after the C-STORE-RSP is sent: what the peer need not wait for (the log line)
    then: Callable[[], None] | None = None


class StoreSink(Protocol):
    """Where one C-STORE's dataset goes, piece by piece."""

    def write(self, data: memoryview) -> None: ...

    def finish(self) -> StoreOutcome:
        """The dataset is complete: the status to answer (raise AbortAssociation to
        abort instead)."""
        ...

    def discard(self) -> None:
        """The association ended before the dataset was complete."""
        ...


@dataclass(eq=False)
class Accepted:
    """One association seen from the acceptor (the handler's view of it)."""

    sock: socket.socket
    host: str
    port: int
    calling_ae: str = ""
    called_ae: str = ""
    contexts: dict[int, AcceptedContext] = field(default_factory=dict)
    #: context results as negotiated: (proposed, result, transfer syntax)
    results: list[tuple[ProposedContext, int, str]] = field(default_factory=list)
    peer_max_pdu: int = 0
    established: bool = False
    ended: bool = False

    @property
    def peer(self) -> str:
        """``AE@host:port`` for the log (``?`` before the request names the AE)."""
        return f"{self.calling_ae or '?'}@{self.host}:{self.port}"

    def abort(self) -> None:
        """From any thread: A-ABORT and shut the connection, which ends ``serve``."""
        with contextlib.suppress(OSError, ValueError):
            self.sock.sendall(encode_abort(0, 0))
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


class Handler(Protocol):
    def admit(self, assoc: Accepted, rq: AssociateRQ) -> tuple[int, int, int] | None:
        """None to accept, else the A-ASSOCIATE-RJ (result, source, reason)."""
        ...

    def established(self, assoc: Accepted) -> None: ...

    def echo(self, assoc: Accepted) -> int: ...

    def store(self, assoc: Accepted, request: StoreRequest) -> StoreSink: ...

    def ended(self, assoc: Accepted, how: End, why: str) -> None:
        """Called exactly once, when the connection is over."""
        ...
