"""What happened to each file, and the totals a summary or report is built from."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from migrator.exitcodes import ExitStatus

#: The reason on a stored file that a lost worker had sent and not recorded, found at the
#: destination by the delivery that took its batch over (migrator/transfer/takeover.py).
FOUND_AFTER_LOSS = (
    "found at the destination after the worker sending its batch was lost; not sent again"
)


class State(enum.StrEnum):
    STORED = "stored"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(slots=True)
class FileOutcome:
    """The final state of one planned file. Exactly one per planned file."""

    uri: str
    state: State
    reason: str = ""
    status: int | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    ts_original: str = ""
    ts_sent: str = ""
    transcoded: bool = False
    warning: bool = False
    bytes: int = 0
    attempts: int = 0
    #: Seconds the last C-STORE took (request start to response); 0 when none was answered
    seconds: float = 0.0
    #: Why a file failed when it is the destination's doing, not the file's: "unreachable"
    #: (no association could be opened) or "rejected" (the PACS refused the association);
    #: "" otherwise. A job that failed only so ends with exit 3 / 4, as `store` does.
    cause: str = ""

    def to_json(self) -> dict[str, Any]:
        # The fields in declaration order, spelled out: dataclasses.asdict deep-copies each
        # value (~15 us a file, 0.3 s of a 20,000-file report) to copy nothing but scalars.
        return {
            "uri": self.uri,
            "state": str(self.state),
            "reason": self.reason,
            "status": None if self.status is None else f"0x{self.status:04X}",
            "sop_class_uid": self.sop_class_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "ts_original": self.ts_original,
            "ts_sent": self.ts_sent,
            "transcoded": self.transcoded,
            "warning": self.warning,
            "bytes": self.bytes,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 6),
            "cause": self.cause,
        }


@dataclass(slots=True)
class StoreResult:
    server: str
    outcomes: list[FileOutcome] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    #: Set when the run stopped because the destination could not be used at all.
    fatal: str = ""
    fatal_exit: ExitStatus | None = None
    #: A job's time spent sending, over its sessions (None: ``finished - started``)
    active: float | None = None

    @property
    def planned(self) -> int:
        return len(self.outcomes)

    def count(self, state: State) -> int:
        return sum(1 for o in self.outcomes if o.state is state)

    @property
    def stored(self) -> int:
        return self.count(State.STORED)

    @property
    def failed(self) -> int:
        return self.count(State.FAILED)

    @property
    def skipped(self) -> int:
        return self.count(State.SKIPPED)

    @property
    def warnings(self) -> int:
        return sum(1 for o in self.outcomes if o.warning)

    @property
    def transcoded(self) -> int:
        return sum(1 for o in self.outcomes if o.transcoded)

    @property
    def bytes_stored(self) -> int:
        return sum(o.bytes for o in self.outcomes if o.state is State.STORED)

    @property
    def duration(self) -> float:
        if self.active is not None:
            return self.active
        return max(0.0, self.finished - self.started)

    @property
    def exit_status(self) -> ExitStatus:
        if self.fatal_exit is not None:
            return self.fatal_exit
        if self.planned == 0:
            return ExitStatus.NO_INPUT
        if self.failed:
            return ExitStatus.PARTIAL_FAILURE
        return ExitStatus.OK
