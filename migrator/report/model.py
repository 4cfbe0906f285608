"""What every report says: one ReportData per migration, and the tables it holds.

Every renderer (text, JSON, CSV, HTML) reads the same ReportData, so the formats cannot
disagree: counts are computed once, by :mod:`migrator.report.builder` (from a StoreResult for
``store``, or from a job's Ledger), into the classes here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from migrator import status as st
from migrator.exitcodes import ExitStatus
from migrator.outcomes import State
from migrator.report.completeness import Completeness
from migrator.report.latency import Latency
from migrator.report.timeline import Timeline
from migrator.report.verification import Verification

#: State of a planned file that has no outcome yet (its batch is queued or being sent).
IN_FLIGHT = "in_flight"


#: Label of files that no worker handled: refused at planning, or sent by `store`.
PLANNER = "(refused at planning)"
STORE_PROCESS = "(this store process)"


@dataclass(slots=True)
class Problem:
    """A planned file that was not stored: one row of the CSV follow-up list."""

    uri: str
    sop_instance_uid: str
    state: str
    status: int | None
    reason: str
    attempts: int
    ts_sent: str
    sop_class_uid: str = ""

    @property
    def status_text(self) -> str:
        return "" if self.status is None else st.fmt(self.status)


@dataclass(slots=True)
class ReasonGroup:
    """Files not stored that share one DICOM status (or, without a status, one cause)."""

    status: int | None
    #: False: the file was never offered to the PACS (refused at inspection, in flight).
    sent: bool
    count: int = 0
    states: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def code(self) -> str:
        if self.status is not None:
            return st.fmt(self.status)
        return "none" if self.sent else "-"

    @property
    def meaning(self) -> str:
        if self.status is not None or self.sent:
            return st.meaning(self.status)
        if self.states.get(IN_FLIGHT) == self.count:
            return "No outcome yet (in flight)"
        return "Not sent (refused before sending)"


@dataclass(slots=True)
class StatusCount:
    """Responses with one DIMSE status (the last response of each file)."""

    status: int
    count: int = 0
    states: Counter[str] = field(default_factory=Counter)

    @property
    def meaning(self) -> str:
        return st.meaning(self.status)

    @property
    def category(self) -> str:
        return str(st.classify(self.status))


@dataclass(slots=True)
class ClassCount:
    """Files of one SOP class (or transfer syntax) by state."""

    uid: str
    states: Counter[str] = field(default_factory=Counter)
    bytes_stored: int = 0

    @property
    def total(self) -> int:
        return sum(self.states.values())


@dataclass(slots=True)
class StudyRow:
    """One study of a job: its instances by state (the lead's "which studies are
    incomplete?"). Accession Number and modality as the planner read them (none for files
    planned from a manifest); never a patient's name or ID."""

    study_uid: str
    accession: str = ""
    modalities: set[str] = field(default_factory=set)
    states: Counter[str] = field(default_factory=Counter)

    @property
    def planned(self) -> int:
        return sum(self.states.values())

    @property
    def complete(self) -> bool:
        """Every instance has its outcome and none failed (skipped copies of an instance
        that was stored count as done)."""
        s = self.states
        return s["stored"] > 0 and not s["failed"] and not s[IN_FLIGHT]

    @property
    def modality(self) -> str:
        return "/".join(sorted(self.modalities))


@dataclass(slots=True)
class WorkerShare:
    name: str
    states: Counter[str] = field(default_factory=Counter)
    bytes_stored: int = 0


@dataclass(slots=True)
class ReportData:
    server: str
    job: str | None = None
    generated: float = 0.0
    created: float | None = None
    started: float = 0.0
    finished: float = 0.0
    #: True when the job had not finished when the report was made (a live report)
    live: bool = False
    fatal: str = ""
    fatal_exit: ExitStatus | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    states: Counter[str] = field(default_factory=Counter)
    warnings: int = 0
    transcoded: int = 0
    #: Stored files a lost worker had sent unrecorded, found at the destination by the
    #: delivery that took their batch over (migrator/transfer/takeover.py)
    found_after_loss: int = 0
    bytes_stored: int = 0
    statuses: dict[int, StatusCount] = field(default_factory=dict)
    groups: dict[tuple[int | None, bool, str], ReasonGroup] = field(default_factory=dict)
    sop_classes: dict[str, ClassCount] = field(default_factory=dict)
    ts_original: dict[str, ClassCount] = field(default_factory=dict)
    ts_sent: dict[str, ClassCount] = field(default_factory=dict)
    workers: dict[str, WorkerShare] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)
    timeline: Timeline = field(default_factory=Timeline)
    problems: list[Problem] = field(default_factory=list)
    #: (uri, status, reason) of files stored with a warning status
    warned: list[tuple[str, int | None, str]] = field(default_factory=list)
    #: Every file as a JSON-ready dict (only when built with ``keep_files``)
    files: list[dict[str, Any]] | None = None
    #: The ledger's own counters, for a cross-check (ledger reports only)
    ledger_counts: dict[str, int] | None = None
    #: The job's last `migrator verify` (ledger reports of a verified job only)
    verification: Verification | None = None
    #: The job's last reconciliation with its source (`verify` of a dimse:// job): the
    #: per-study completeness table (report/completeness.py); None when never reconciled
    completeness: Completeness | None = None
    #: A job's time spent sending over its sessions (None: ``finished - started``)
    active_s: float | None = None
    #: A job's sessions and the changes made to it (Ledger.history)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Study Instance UID -> its row (job reports: the plan knows each file's study)
    studies: dict[str, StudyRow] = field(default_factory=dict)
    #: Files without a Study Instance UID (not DICOM, refused at planning, not read yet)
    no_study: int = 0
    #: A scheduled job: per window, seconds spent in it and files stored (report/windows.py)
    windows: list[dict[str, Any]] | None = None
    #: A job with files named by a priority list or `urgent`: per class, files by state and
    #: when the class finished (report/classes.py)
    priority_classes: list[dict[str, Any]] | None = None

    # -- totals ----------------------------------------------------------------------------
    @property
    def stored(self) -> int:
        return self.states[State.STORED.value]

    @property
    def failed(self) -> int:
        return self.states[State.FAILED.value]

    @property
    def skipped(self) -> int:
        return self.states[State.SKIPPED.value]

    @property
    def in_flight(self) -> int:
        return self.states[IN_FLIGHT]

    @property
    def planned(self) -> int:
        return sum(self.states.values())

    @property
    def settled(self) -> int:
        return self.stored + self.failed + self.skipped

    @property
    def invariant_holds(self) -> bool:
        """``planned = stored + failed + skipped``: every planned file has its one outcome."""
        return self.planned == self.settled

    @property
    def duration(self) -> float:
        """Seconds spent sending: a job's sessions added up (a `retry` an hour later adds
        its own seconds, not the hour); ``finished - started`` for `store` and old jobs."""
        if self.active_s is not None:
            return self.active_s
        return max(0.0, self.finished - self.started)

    @property
    def has_ledger(self) -> bool:
        """A job's report, read from its ledger (so `migrator verify` applies to it)."""
        return self.ledger_counts is not None

    @property
    def files_per_s(self) -> float:
        return self.stored / self.duration if self.duration > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_stored / 1e6 / self.duration if self.duration > 0 else 0.0

    @property
    def exit_status(self) -> ExitStatus:
        """As `store` and `run` exit: files in flight make the job incomplete (6)."""
        if self.fatal_exit is not None:
            return self.fatal_exit
        if self.planned == 0:
            return ExitStatus.NO_INPUT
        if self.in_flight:
            return ExitStatus.INCOMPLETE
        if self.failed:
            return ExitStatus.PARTIAL_FAILURE
        return ExitStatus.OK

    def study_rows(self) -> list[StudyRow]:
        """Incomplete studies first (most files not stored first), then by UID."""
        return sorted(
            self.studies.values(),
            key=lambda r: (r.complete, -(r.planned - r.states["stored"]), r.study_uid),
        )

    @property
    def studies_complete(self) -> int:
        return sum(1 for r in self.studies.values() if r.complete)

    def failure_groups(self) -> list[ReasonGroup]:
        """Groups of files not stored, largest first (ties: by code)."""
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.code))


def uid_name(uid: str) -> str:
    """``CT Image Storage`` for a known UID; the UID itself otherwise."""
    if not uid:
        return "(unknown: not DICOM or not read)"
    from migrator import uidnames

    return uidnames.name(uid)


def count_rows(table: dict[str, ClassCount]) -> list[ClassCount]:
    return sorted(table.values(), key=lambda c: (-c.total, c.uid))
