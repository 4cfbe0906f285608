"""One ReportData per migration, built from a StoreResult (``store``) or a job's Ledger.

Every renderer (text, JSON, CSV, HTML) reads the same ReportData, so the formats cannot
disagree: counts are computed once, here.

The ledger of a large job holds tens of millions of outcomes, so the outcomes are folded in
one pass into counters; only the files that were not stored (the follow-up list) and, when
asked for, the per-file list of the JSON report are kept. Latency percentiles come from a
bounded reservoir sample (exact up to ``LATENCY_SAMPLE`` files). A job's last `migrator
verify` (stored per ledger against confirmed by the PACS) is read from the ledger too, with at
most ``verification.MAX_FILES`` of the files it found missing (:mod:`verification`).
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from migrator import duplicates
from migrator import status as st
from migrator.exitcodes import ExitStatus
from migrator.outcomes import FileOutcome, State, StoreResult
from migrator.report.masking import mask_secrets
from migrator.report.verification import MAX_FILES, Verification
from migrator.report.verification import load as load_verification

if TYPE_CHECKING:
    from migrator.ledger import Ledger, PlannedFile

#: State of a planned file that has no outcome yet (its batch is queued or being sent).
IN_FLIGHT = "in_flight"
#: At most this many points in a timeline chart or series; longer jobs use wider buckets.
MAX_TIMELINE_POINTS = 600
#: Latencies kept for percentiles; beyond that a uniform random sample of this size.
LATENCY_SAMPLE = 100_000
#: Upper bounds (seconds) of the latency histogram's bins; the last bin is open-ended.
LATENCY_BINS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
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
class WorkerShare:
    name: str
    states: Counter[str] = field(default_factory=Counter)
    bytes_stored: int = 0


@dataclass(slots=True)
class Latency:
    """C-STORE latencies (request start to response) of the files that got a response."""

    count: int = 0
    total: float = 0.0
    maximum: float = 0.0
    bins: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BINS) + 1))
    sample: list[float] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)
        self.bins[_bin_index(seconds)] += 1
        if len(self.sample) < LATENCY_SAMPLE:
            self.sample.append(seconds)
        else:  # reservoir sampling: every latency has the same chance to be in the sample
            j = self._rng.randrange(self.count)
            if j < LATENCY_SAMPLE:
                self.sample[j] = seconds

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile (0 < p <= 100) of the sample; 0 when there is none."""
        if not self.sample:
            return 0.0
        ordered = sorted(self.sample)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]

    def bin_labels(self) -> list[str]:
        labels = []
        low = 0.0
        for high in LATENCY_BINS:
            labels.append(f"{_ms(low)}–{_ms(high)}")
            low = high
        labels.append(f"≥ {_ms(low)}")
        return labels


def _bin_index(seconds: float) -> int:
    # bisect_right: a latency equal to a bound belongs to the next bin ("< high").
    return bisect.bisect_right(LATENCY_BINS, seconds)


def _ms(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    return f"{seconds:g} s"


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One bucket of the timeline: ``offset`` seconds after ``Timeline.start``."""

    offset: int
    width: int
    files: int
    bytes: int
    #: Files that got any outcome (stored, failed, skipped) in this bucket
    settled: int
    #: Running totals at the end of the bucket
    cum_files: int
    cum_settled: int

    @property
    def files_per_s(self) -> float:
        return self.files / self.width

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.width


@dataclass(slots=True)
class Timeline:
    start: int = 0
    bucket_s: int = 1
    points: list[TimelinePoint] = field(default_factory=list)
    peak_files_per_s: int = 0
    peak_bytes_per_s: int = 0
    #: Seconds from the first to the last second in which a file was stored
    sending_s: int = 0


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
        """As `store` and `run` exit: files in flight count as not done (1)."""
        if self.fatal_exit is not None:
            return self.fatal_exit
        if self.planned == 0:
            return ExitStatus.NO_INPUT
        if self.failed or self.in_flight:
            return ExitStatus.PARTIAL_FAILURE
        return ExitStatus.OK

    def failure_groups(self) -> list[ReasonGroup]:
        """Groups of files not stored, largest first (ties: by code)."""
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.code))


class _Builder:
    """Folds outcomes into a ReportData, one file at a time."""

    def __init__(self, data: ReportData, *, keep_files: bool, default_worker: str) -> None:
        self.data = data
        self.default_worker = default_worker
        if keep_files:
            data.files = []
        #: epoch second -> files settled in it (from each outcome's ``at``)
        self.settled_at: Counter[int] = Counter()

    def add(self, outcome: FileOutcome, extra: dict[str, Any] | None = None) -> None:
        d = self.data
        extra = extra or {}
        state = str(outcome.state)
        d.states[state] += 1
        _count(d.sop_classes, outcome.sop_class_uid, state)
        _count(d.ts_original, outcome.ts_original, state)
        name = str(extra.get("worker") or self.default_worker)
        worker = d.workers.get(name)
        if worker is None:
            worker = d.workers[name] = WorkerShare(name)
        worker.states[state] += 1
        at = extra.get("at")
        if isinstance(at, (int, float)):  # a tuple: isinstance with a union is slower
            self.settled_at[int(at)] += 1
        if outcome.status is not None:
            sc = d.statuses.get(outcome.status)
            if sc is None:
                sc = d.statuses[outcome.status] = StatusCount(outcome.status)
            sc.count += 1
            sc.states[state] += 1
        if outcome.seconds > 0:
            d.latency.add(outcome.seconds)
        if outcome.state is State.STORED:
            d.bytes_stored += outcome.bytes
            d.sop_classes[outcome.sop_class_uid].bytes_stored += outcome.bytes
            worker.bytes_stored += outcome.bytes
            _count(d.ts_sent, outcome.ts_sent or outcome.ts_original, state)
            d.ts_sent[outcome.ts_sent or outcome.ts_original].bytes_stored += outcome.bytes
            d.transcoded += int(outcome.transcoded)
            if outcome.warning:
                d.warnings += 1
                d.warned.append((outcome.uri, outcome.status, outcome.reason))
        else:
            self._problem(
                Problem(
                    uri=outcome.uri,
                    sop_instance_uid=outcome.sop_instance_uid,
                    state=state,
                    status=outcome.status,
                    reason=outcome.reason,
                    attempts=outcome.attempts,
                    ts_sent=outcome.ts_sent,
                    sop_class_uid=outcome.sop_class_uid,
                )
            )
        if d.files is not None:
            row = outcome.to_json()
            # (Not a dict comprehension: this runs once per file, 20,000 times for 20,000.)
            if "worker" in extra:
                row["worker"] = extra["worker"]
            if "at" in extra:
                row["at"] = extra["at"]
            d.files.append(row)

    def add_in_flight(self, planned: PlannedFile) -> None:
        d = self.data
        d.states[IN_FLIGHT] += 1
        _count(d.sop_classes, planned.sop_class_uid, IN_FLIGHT)
        _count(d.ts_original, planned.transfer_syntax, IN_FLIGHT)
        reason = "in flight: no outcome recorded yet"
        self._problem(
            Problem(
                uri=planned.uri,
                sop_instance_uid=planned.sop_instance_uid,
                state=IN_FLIGHT,
                status=None,
                reason=reason,
                attempts=0,
                ts_sent="",
                sop_class_uid=planned.sop_class_uid,
            )
        )
        if d.files is not None:
            row = FileOutcome(
                planned.uri,
                State.FAILED,  # replaced below: FileOutcome has no in-flight state
                reason,
                sop_class_uid=planned.sop_class_uid,
                sop_instance_uid=planned.sop_instance_uid,
                ts_original=planned.transfer_syntax,
            ).to_json()
            row["state"] = IN_FLIGHT
            d.files.append(row)

    def _problem(self, problem: Problem) -> None:
        d = self.data
        d.problems.append(problem)
        # A file with a DIMSE status or any attempt was offered to the PACS; without a
        # status, the cause is in the reason text, so each distinct cause is its own group.
        sent = problem.status is not None or problem.attempts > 0
        cause = "" if problem.status is not None else reason_key(problem.uri, problem.reason)
        if problem.state == IN_FLIGHT:
            cause = IN_FLIGHT
        key = (problem.status, sent, cause)
        group = d.groups.setdefault(key, ReasonGroup(problem.status, sent))
        group.count += 1
        group.states[problem.state] += 1
        group.reasons[reason_key(problem.uri, problem.reason)] += 1

    def finish(self, timeline: dict[int, tuple[int, int]] | None) -> ReportData:
        d = self.data
        d.problems.sort(key=lambda p: p.uri)
        d.warned.sort()
        if d.files is not None:
            d.files.sort(key=lambda f: str(f["uri"]))
        d.timeline = build_timeline(timeline or {}, self.settled_at)
        return d


def _count(table: dict[str, ClassCount], uid: str, state: str) -> None:
    counts = table.get(uid)
    if counts is None:  # (not setdefault: it would build a ClassCount for every file)
        counts = table[uid] = ClassCount(uid)
    counts.states[state] += 1


def reason_key(uri: str, reason: str) -> str:
    """The cause without the per-file part, so that identical causes group together."""
    group = duplicates.group_reason(reason)  # they name the other file and the UID
    if group is not None:
        return group
    if uri and reason.startswith(uri):
        reason = reason[len(uri) :].lstrip(":").strip()
    elif reason.startswith(("/", "s3://", "mem://")):
        reason = reason.split(": ", 1)[-1]
    return reason or "(no reason recorded)"


def build_timeline(
    per_second: dict[int, tuple[int, int]], settled_at: Counter[int] | None = None
) -> Timeline:
    """Buckets of at most ``MAX_TIMELINE_POINTS``: stored files/bytes and settled files.

    ``per_second`` is the ledger's timeline (epoch second -> files, bytes stored);
    ``settled_at`` counts every outcome (also failures and skips) by the second it was
    recorded in, for the cumulative progress.
    """
    settled_at = settled_at or Counter()
    seconds = set(per_second) | set(settled_at)
    if not seconds:
        return Timeline()
    first, last = min(seconds), max(seconds)
    span = last - first + 1
    bucket = max(1, math.ceil(span / MAX_TIMELINE_POINTS))
    n = math.ceil(span / bucket)
    files = [0] * n
    nbytes = [0] * n
    settled = [0] * n
    for sec, (f, b) in per_second.items():
        i = (sec - first) // bucket
        files[i] += f
        nbytes[i] += b
    for sec, c in settled_at.items():
        settled[(sec - first) // bucket] += c
    points = []
    cum_files = cum_settled = 0
    for i in range(n):
        cum_files += files[i]
        cum_settled += settled[i]
        # The last bucket may cover fewer seconds than the others: rates use its real width.
        width = min(bucket, span - i * bucket)
        points.append(
            TimelinePoint(
                i * bucket, width, files[i], nbytes[i], settled[i], cum_files, cum_settled
            )
        )
    stored_secs = [s for s, (f, _) in per_second.items() if f]
    return Timeline(
        start=first,
        bucket_s=bucket,
        points=points,
        peak_files_per_s=max((f for f, _ in per_second.values()), default=0),
        peak_bytes_per_s=max((b for _, b in per_second.values()), default=0),
        sending_s=(max(stored_secs) - min(stored_secs) + 1) if stored_secs else 0,
    )


def from_store_result(
    result: StoreResult,
    settings: dict[str, Any] | None = None,
    *,
    job: str | None = None,
    keep_files: bool = True,
) -> ReportData:
    """The report of a `store` run (or of any StoreResult); it has no timeline or workers."""
    data = ReportData(
        server=result.server,
        job=job,
        generated=time.time(),
        started=result.started,
        finished=result.finished,
        fatal=result.fatal,
        fatal_exit=result.fatal_exit,
        settings=mask_secrets(settings or {}),
    )
    builder = _Builder(data, keep_files=keep_files, default_worker=STORE_PROCESS)
    for outcome in result.outcomes:
        builder.add(outcome)
    return builder.finish(None)


def store_view(job: ReportData, result: StoreResult) -> ReportData | None:
    """What ``from_store_result(result, keep_files=False)`` builds, taken from ``job``: the
    report of the job whose ledger read gave ``result.outcomes`` (``from_ledger(...,
    outcomes=result.outcomes)``). Its counts, statuses, groups, problems and latencies were
    built from the same outcomes in the same order, so nothing is gone over twice (~50 ms per
    20,000 files); what only a job has (timeline, workers, verification, files) is left out.

    None when ``job`` counts files in flight: they are among its problems and groups, and a
    StoreResult has none (build from the result then).
    """
    if job.in_flight:
        return None
    return ReportData(
        server=result.server,
        generated=time.time(),
        started=result.started,
        finished=result.finished,
        fatal=result.fatal,
        fatal_exit=result.fatal_exit,
        settings=mask_secrets({}),
        states=job.states,
        warnings=job.warnings,
        transcoded=job.transcoded,
        bytes_stored=job.bytes_stored,
        statuses=job.statuses,
        groups=job.groups,
        sop_classes=job.sop_classes,
        ts_original=job.ts_original,
        ts_sent=job.ts_sent,
        workers={STORE_PROCESS: WorkerShare(STORE_PROCESS, Counter(job.states), job.bytes_stored)},
        latency=job.latency,
        timeline=build_timeline({}, Counter()),
        problems=job.problems,
        warned=job.warned,
    )


def from_ledger(
    ledger: Ledger,
    *,
    keep_files: bool = True,
    redis_url: str | None = None,
    fatal: str = "",
    fatal_exit: ExitStatus | None = None,
    now: float | None = None,
    verify_limit: int | None = MAX_FILES,
    outcomes: list[FileOutcome] | None = None,
) -> ReportData:
    """The report of a job, read from its ledger; works while the job runs (``live``).

    Files in flight are read first and outcomes second, and a file found in both counts as
    settled, so a file that settles during the read is counted once.

    ``outcomes``, when given, gets every settled file's outcome as read, in the order of
    ``Ledger.iter_outcomes`` (what ``Ledger.to_store_result`` holds): `migrator run` builds its
    summary from them instead of reading the ledger a second time (~0.2 s per 20,000 files).

    The job's last `migrator verify`, if any, becomes ``verification``, with at most
    ``verify_limit`` of its missing (and of its unconfirmed) files (None: all of them).
    """
    from migrator.jobconfig import JobConfig

    config = ledger.config()
    meta = ledger.meta()
    now = time.time() if now is None else now
    settings: dict[str, Any] = {"job": ledger.job_id, **config}
    if redis_url:
        settings["redis_url"] = redis_url
    data = ReportData(
        server=JobConfig.from_dict(config).server,
        job=ledger.job_id,
        generated=now,
        created=meta.get("created"),
        started=meta.get("started", meta.get("created", 0.0)),
        finished=meta.get("finished", now),
        live="finished" not in meta,
        fatal=fatal,
        fatal_exit=fatal_exit,
        settings=mask_secrets(settings),
    )
    counts = ledger.counts()
    verification = load_verification(ledger, limit=verify_limit)
    builder = _Builder(data, keep_files=keep_files, default_worker=PLANNER)
    for fid, outcome, extra in ledger.iter_outcomes():
        builder.add(outcome, extra)
        if outcomes is not None:
            outcomes.append(outcome)
        if verification is not None:
            verification.see(fid, outcome)
    if counts["in_flight"] > 0:
        for planned in ledger.iter_in_flight():
            builder.add_in_flight(planned)
    data.ledger_counts = counts
    builder.finish(ledger.timeline())
    if verification is not None:
        data.verification = verification.resolve(ledger, stored_now=data.stored)
    return data


def uid_name(uid: str) -> str:
    """``CT Image Storage`` for a known UID; the UID itself otherwise."""
    if not uid:
        return "(unknown: not DICOM or not read)"
    from migrator import uidnames

    return uidnames.name(uid)


def count_rows(table: dict[str, ClassCount]) -> list[ClassCount]:
    return sorted(table.values(), key=lambda c: (-c.total, c.uid))
