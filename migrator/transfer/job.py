"""One file on its way through the transfer core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migrator.dicomfile import DicomHeader
from migrator.sources.base import Source, SourceItem
from migrator.transfer.destination import Pair

if TYPE_CHECKING:
    from migrator.transfer.claims import Remote


@dataclass(eq=False, slots=True)
class Job:
    """One file to send, and what happened to it so far."""

    item: SourceItem
    source: Source
    #: Its header when known (inspected, or planned); None: read before sending
    header: DicomHeader | None
    #: The caller's handle (a batch's PlannedFile)
    ref: Any = None
    #: The header came from a plan: trusted while the file is unchanged (size, version)
    planned: bool = False
    attempts: int = 0
    #: Times the PACS ended a fresh association while this file was its first request
    aborts: int = 0
    #: The PACS ended an association while this file was in flight: its next attempt goes
    #: on a fresh one, so that a second abort can be told to be the file's doing
    needs_fresh: bool = False
    #: Owner of its SOP Instance UID (another job or a remote file) while it waits
    owner: Job | Remote | None = None
    waiting_since: float = 0.0

    @property
    def pair(self) -> Pair:
        assert self.header is not None
        return (self.header.sop_class_uid, self.header.transfer_syntax)

    @property
    def uri(self) -> str:
        return self.item.uri
