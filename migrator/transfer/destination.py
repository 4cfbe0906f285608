"""The Destination seam: what the per-file policy needs from wherever files go.

A ``Destination`` opens ``Connection``s; a connection carries files. The policy
(``migrator.transfer.policy``) only ever sees these two protocols, so a second kind of
destination (DICOMweb STOW-RS) is a second implementation of them, not a change of policy.
The DIMSE implementation is ``migrator.transfer.dimse``.

Sending is split in two so that one thread keeps several connections busy: ``start`` puts a
file's request on the wire (the payload is no longer needed afterwards) and ``finish``
reads its answer; between the two the policy starts files on its other connections and
waits for whichever answers first (``fileno`` / ``buffered``). A connection has at most
``capacity`` requests outstanding (DIMSE without an asynchronous operations window: one).

Several files may go in one request (STOW-RS: a multipart body): ``start`` then only stages
a file, while ``room`` says another fits; ``flush`` puts the staged request on the wire. The
policy starts files on a connection only while it has none in flight, and flushes at the end
of each round of starts, so a request is never extended once it is sent. DIMSE sends in
``start`` and has no room for a second file: its ``flush`` does nothing.

Failures that leave a file's outcome unknown raise ``AssociationLost`` (re-send it on a new
connection); a connection that cannot be opened raises ``ConnectError`` or
``AssociationRejected``. Everything the destination *answered* is a ``SendResult``.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Protocol

from migrator import status as st
from migrator.dicomfile import DicomHeader
from migrator.sources.base import Payload

#: (SOP Class UID, Transfer Syntax UID) of a file: what a connection must carry for it.
Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the destination answered about one file (or why nothing could be sent)."""

    outcome: st.Outcome
    #: DIMSE status, or None when nothing was answered (refused before sending)
    status: int | None
    #: Transfer syntax the dataset was sent in ("" when nothing was sent)
    ts_sent: str
    #: True when the dataset was decoded and re-encoded because the PACS refused its syntax
    transcoded: bool
    error: str = ""
    bytes_sent: int = 0
    #: Seconds from the start of the request to its answer
    seconds: float = 0.0
    #: The destination asked for no retry before this many seconds (HTTP Retry-After)
    retry_after: float = 0.0


class Pending(Protocol):
    """A request on the wire whose answer is still to be read (opaque to the policy)."""


class Connection(Protocol):
    """One open channel to the destination (a DIMSE association; an HTTP session)."""

    #: Requests that may be outstanding before ``finish`` must be called
    capacity: int
    #: Requests started on it so far (a fresh connection has 0 before its first)
    requests: int

    @property
    def alive(self) -> bool:
        """False once it was aborted, released or lost."""
        ...

    def covers(self, pair: Pair) -> bool:
        """Whether this connection was negotiated for ``pair``: the destination has said
        whether it takes that SOP class in that syntax (or forced syntax), so a file of
        that pair is sent here as is, re-encoded, or refused, on the destination's word."""
        ...

    def start(self, header: DicomHeader, payload: Payload) -> Pending | SendResult:
        """Send the file's request; a SendResult when nothing could be sent (no usable
        context, a conversion that failed). Raises AssociationLost, SourceError."""
        ...

    def room(self, size: int) -> bool:
        """Whether a file of ``size`` bytes may join the files started and not flushed yet."""
        ...

    def flush(self) -> None:
        """Send what was staged (nothing to do when ``start`` sent). Raises
        AssociationLost: the outcome of every staged file is then unknown."""
        ...

    def finish(self, pending: Pending) -> SendResult:
        """Read the answer to a started request. Raises AssociationLost."""
        ...

    def fileno(self) -> int:
        """For waiting on several connections at once (``select``)."""
        ...

    def buffered(self) -> bool:
        """An answer (or part of one) is already read from the socket."""
        ...

    def deadline(self, pending: Pending) -> float:
        """``time.monotonic()`` by which the answer to ``pending`` must have come."""
        ...

    def release(self) -> None:
        """Close in good order (falls back to abort)."""
        ...

    def abort(self) -> None: ...


class Destination(Protocol):
    """Where files go; opens connections for the pairs a piece of work needs."""

    #: Identity for fleet-wide limits and metrics (one PACS, one limit)
    key: str
    #: Human form, for messages ("host:port (AE)")
    name: str

    def connect(self, needed: Pair, wanted: Set[Pair]) -> Connection:
        """A new connection that covers ``needed`` and as many of ``wanted`` as one
        connection can. Raises ConnectError, AssociationRejected."""
        ...
