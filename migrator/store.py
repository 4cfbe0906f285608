"""The single-machine sender behind ``migrator store`` and the ``StoreScu`` library API.

Flow: list every source -> inspect headers -> plan association profiles (<= 128 contexts
each) -> N threads, each owning one association, pull files from a shared scheduler, pass
the global rate limiter and send with ``workers.sender.send_file``. Every listed file ends
as exactly one FileOutcome (stored / failed / skipped).

Retry policy (ARCHITECTURE.md §3): transient statuses (0xA7xx) and unknown outcomes (abort,
timeout, lost connection) are re-sent on a fresh association after a backoff, up to
``retries`` times. Connection failures are a property of the destination, not of a file:
they are retried per association and, once exhausted, end the run with every unsent file
failed for that reason (exit 3, or 4 for a rejected association).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from migrator import duplicates
from migrator import status as st
from migrator.contexts import Profile, plan_profiles
from migrator.dicomfile import DicomHeader
from migrator.dul.association import Association, AssociationLost, Timeouts
from migrator.dul.tls import TlsSettings
from migrator.errors import (
    AssociationRejected,
    ConnectError,
    MigratorError,
    SourceError,
)
from migrator.exitcodes import ExitStatus
from migrator.limits.rate import Limits, RateLimiter, make_limiter
from migrator.outcomes import FileOutcome, State, StoreResult
from migrator.scheduler import Scheduler
from migrator.sources.base import Source, SourceItem
from migrator.sources.filesystem import FileSource, MemorySource
from migrator.sources.inspect import inspect_item, refusal
from workers.sender import PendingSend, SendResult, finish_send, start_send

if TYPE_CHECKING:
    from migrator.sources.s3 import S3Settings

_MAX_BACKOFF = 30.0
#: Associations one sending thread keeps busy (``--concurrency`` above this adds threads).
LANES_PER_THREAD = 8


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Everything ``store`` needs to know. Defaults match the command line's."""

    host: str
    port: int = 11112
    called_ae: str = "ANY-SCP"
    calling_ae: str = "MIGRATOR"
    #: Overall deadline in seconds for the whole transfer (None: no limit)
    timeout: float | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: Largest PDU we accept (what we advertise); the peer's limit sizes what we send
    max_pdu: int = 16384
    limits: Limits = field(default_factory=lambda: Limits(None, None))
    concurrency: int = 1
    #: Pause after each file, per association (seconds)
    throttle_delay: float = 0.0
    transfer_syntax: str | None = None
    allow_lossy: bool = False
    retries: int = 3
    retry_backoff: float = 0.5
    #: DICOM TLS to the destination (None: plain TCP)
    tls: TlsSettings | None = None

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port} ({self.called_ae})"


@dataclass(slots=True)
class _Lane:
    """One association of a sending thread, and the request in flight on it."""

    assoc: Association | None = None
    job: _Job | None = None
    pending: PendingSend | None = None
    connect_failures: int = 0


@dataclass(slots=True)
class _Job:
    item: SourceItem
    source: Source
    header: DicomHeader
    attempts: int = 0


FileCallback = Callable[[FileOutcome], None]


class StoreScu:
    """Send files, folders, S3 objects and in-memory bytes to one DICOM destination.

    Mirrors node-dicom's ``StoreScu``: add inputs, register callbacks, call ``send()``.
    Callbacks run on worker threads; keep them short and thread-safe.

    >>> scu = StoreScu(StoreSettings(host="pacs", port=104, called_ae="PACS"))
    >>> scu.add_folder("/archive/2019", recursive=True)          # doctest: +SKIP
    >>> result = scu.send()                                       # doctest: +SKIP
    >>> result.exit_status                                        # doctest: +SKIP
    """

    def __init__(
        self,
        settings: StoreSettings,
        *,
        on_transfer_started: Callable[[int], None] | None = None,
        on_file_sending: Callable[[str], None] | None = None,
        on_file_sent: FileCallback | None = None,
        on_file_error: FileCallback | None = None,
        on_transfer_completed: Callable[[StoreResult], None] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self._sources: list[Source] = []
        self._on_started = on_transfer_started
        self._on_sending = on_file_sending
        self._on_sent = on_file_sent
        self._on_error = on_file_error
        self._on_completed = on_transfer_completed
        self._limiter = limiter or make_limiter(settings.limits)
        self._lock = threading.Lock()
        self._live: set[Association] = set()

    # -- inputs ----------------------------------------------------------------------------

    def add_file(self, path: str) -> None:
        self._sources.append(FileSource(path))

    def add_folder(self, path: str, *, recursive: bool = True) -> None:
        self._sources.append(FileSource(path, recursive=recursive))

    def add_s3(self, uri: str, settings: S3Settings | None = None) -> None:
        """Add an S3 object (``s3://bucket/key``) or every object under a prefix."""
        from migrator.sources.s3 import S3Settings, S3Source

        self._sources.append(S3Source(uri, settings or S3Settings()))

    def add_bytes(self, data: bytes, name: str = "memory") -> None:
        self._sources.append(MemorySource(data, name))

    def add_source(self, source: Source) -> None:
        self._sources.append(source)

    # -- run -------------------------------------------------------------------------------

    def send(self) -> StoreResult:
        """Send everything added. Raises ConfigError for unusable TLS files."""
        if self.settings.tls is not None:
            self.settings.tls.client_context()  # fail now, not in every sending thread
        result = StoreResult(server=self.settings.server, started=time.time())
        deadline = time.monotonic() + self.settings.timeout if self.settings.timeout else None
        jobs, refused = self._inspect_all()
        if self._on_started:
            self._on_started(len(jobs) + len(refused))
        for outcome in refused:
            self._record(result, outcome)
        pairs = {(j.header.sop_class_uid, j.header.transfer_syntax) for j in jobs}
        profiles = plan_profiles(pairs, forced_syntax=self.settings.transfer_syntax)
        for profile in profiles:
            mine = [j for j in jobs if j.header.sop_class_uid in profile.sop_classes]
            if result.fatal:
                # The destination is unusable (refused, rejected): do not try it again.
                for job in mine:
                    self._fail(result, job, result.fatal, None)
            elif mine:
                self._run_profile(profile, mine, result, deadline)
        result.finished = time.time()
        if self._on_completed:
            self._on_completed(result)
        return result

    def _inspect_all(self) -> tuple[list[_Job], list[FileOutcome]]:
        """Read every header; return what to send and what was refused before sending."""
        jobs: list[_Job] = []
        refused: list[FileOutcome] = []
        pending: list[tuple[Source, SourceItem]] = []
        for source in self._sources:
            try:
                for item in source.iter_items():
                    pending.append((source, item))
            except SourceError as exc:
                refused.append(FileOutcome(_source_name(source), State.FAILED, str(exc)))
        remote = any(not isinstance(s, FileSource) for s, _ in pending)
        # Remote sources cost a round trip per header: inspect them in parallel. Local
        # headers take ~40 µs each: a thread hand-off per file would double that.
        with ThreadPoolExecutor(max_workers=8 if remote else 1) as pool:
            inspected = (
                pool.map(lambda p: inspect_item(*p), pending)
                if remote
                else (inspect_item(*p) for p in pending)
            )
            for (source, item), header in zip(pending, inspected, strict=True):
                problem = refusal(header)
                if problem is None:
                    assert isinstance(header, DicomHeader)
                    jobs.append(_Job(item, source, header))
                    continue
                outcome = FileOutcome(item.uri, problem[0], problem[1])
                if isinstance(header, DicomHeader):
                    outcome.sop_class_uid = header.sop_class_uid
                    outcome.sop_instance_uid = header.sop_instance_uid
                    outcome.ts_original = header.transfer_syntax
                refused.append(outcome)
            jobs, settled = self._settle_duplicates(jobs, pool)
        return jobs, refused + settled

    def _settle_duplicates(
        self, jobs: list[_Job], pool: ThreadPoolExecutor
    ) -> tuple[list[_Job], list[FileOutcome]]:
        """Only the first file listed with each SOP Instance UID is sent; each later one is
        compared with it (migrator/duplicates.py): skipped when identical, failed as a
        conflict when not, so that neither copy overwrites the other at the PACS."""
        first: dict[str, _Job] = {}
        send: list[_Job] = []
        later: list[tuple[_Job, _Job]] = []
        for job in jobs:
            owner = first.setdefault(job.header.sop_instance_uid, job)
            if owner is job:
                send.append(job)
            else:
                later.append((job, owner))
        if not later:
            return jobs, []

        def judge(pair: tuple[_Job, _Job]) -> tuple[State, str] | None:
            job, owner = pair
            uid = job.header.sop_instance_uid
            try:
                return duplicates.settle(
                    duplicates.Copy(job.source, job.item, uid),
                    duplicates.Copy(owner.source, owner.item, uid),
                )
            except MigratorError as exc:  # this file cannot be read: it fails for that
                return State.FAILED, str(exc)

        settled: list[FileOutcome] = []
        for (job, _), verdict in zip(later, pool.map(judge, later), strict=True):
            if verdict is None:  # cannot happen with equal UIDs; sending is the old way
                send.append(job)
                continue
            settled.append(self._outcome(job, verdict[0], verdict[1], None))
        return send, settled

    def _run_profile(
        self, profile: Profile, jobs: list[_Job], result: StoreResult, deadline: float | None
    ) -> None:
        sched: Scheduler[_Job] = Scheduler(jobs)
        fatal: list[tuple[str, ExitStatus]] = []
        associations = min(self.settings.concurrency, len(jobs))
        # One thread keeps several associations busy (send on each, then collect the
        # responses): threads would fight over the GIL for every response (measured: ~150 µs
        # of CPU per file with 2-4 threads against ~75 µs from one thread). A pause after
        # each file (--throttle-delay) is per association: one thread each then.
        per_thread = 1 if self.settings.throttle_delay else LANES_PER_THREAD
        counts = [per_thread] * (associations // per_thread)
        if associations % per_thread:
            counts.append(associations % per_thread)
        threads = [
            threading.Thread(
                target=self._worker,
                args=(profile, sched, result, fatal, deadline, lanes),
                name=f"store-{profile.index}-{n}",
                daemon=True,
            )
            for n, lanes in enumerate(counts)
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.2)
                if deadline is not None and time.monotonic() > deadline + 1.0:
                    # In-flight sends past the deadline: abort them (unblocks the threads).
                    with self._lock:
                        live = list(self._live)
                    for assoc in live:
                        assoc.abort()
        if fatal and not result.fatal:
            result.fatal, result.fatal_exit = fatal[0]
        reason = fatal[0][0] if fatal else "not sent: stopped"
        for job in sched.stop():
            self._fail(result, job, reason, None)

    def _worker(
        self,
        profile: Profile,
        sched: Scheduler[_Job],
        result: StoreResult,
        fatal: list[tuple[str, ExitStatus]],
        deadline: float | None,
        lanes_wanted: int = 1,
    ) -> None:
        """Drive ``lanes_wanted`` associations: start a file on every idle one, then read
        the oldest outstanding response, until the scheduler runs dry."""
        lanes = [_Lane() for _ in range(lanes_wanted)]
        flying: deque[_Lane] = deque()
        try:
            while True:
                ended = False
                for lane in lanes:
                    if lane.job is not None:
                        continue
                    # Block for work only when nothing of ours is waiting for an answer.
                    job = sched.get(block=not flying)
                    if job is None:
                        ended = not flying
                        break
                    self._start(lane, profile, job, sched, result, fatal, deadline)
                    if lane.job is not None:
                        flying.append(lane)
                if flying:
                    self._finish(flying.popleft(), sched, result)
                elif ended:
                    return
                if self.settings.throttle_delay:
                    time.sleep(self.settings.throttle_delay)
        finally:
            for lane in lanes:
                if lane.job is not None:  # only after an unexpected error: lose nothing
                    self._fail(result, lane.job, "outcome unknown: the sender stopped", None)
                    sched.done()
                if lane.assoc is not None:
                    lane.assoc.release()
                    self._forget(lane.assoc)

    def _start(
        self,
        lane: _Lane,
        profile: Profile,
        job: _Job,
        sched: Scheduler[_Job],
        result: StoreResult,
        fatal: list[tuple[str, ExitStatus]],
        deadline: float | None,
    ) -> None:
        """Put ``job``'s request on the wire on ``lane`` (opening its association), or
        settle it at once (deadline passed, destination unusable, file unreadable...)."""
        s = self.settings
        if deadline is not None and time.monotonic() > deadline:
            self._fail(result, job, f"not sent: overall timeout ({s.timeout:g}s) reached", None)
            sched.done()
            return
        if lane.assoc is None or not lane.assoc.is_alive:
            try:
                lane.assoc = self._associate(profile)
                lane.connect_failures = 0
            except (ConnectError, AssociationRejected) as exc:
                lane.assoc = None
                lane.connect_failures += 1
                transient = not isinstance(exc, AssociationRejected) or exc.transient
                if transient and lane.connect_failures <= s.retries:
                    sched.retry(job, self._backoff(lane.connect_failures))
                    return
                code = (
                    ExitStatus.ASSOCIATION_REJECTED
                    if isinstance(exc, AssociationRejected)
                    else ExitStatus.CANNOT_CONNECT
                )
                fatal.append((str(exc), code))
                self._fail(result, job, str(exc), None)
                sched.done()
                for left in sched.stop():
                    self._fail(result, left, str(exc), None)
                return
        assoc = lane.assoc
        job.attempts += 1
        self._limiter.acquire(1, job.item.size)
        if self._on_sending:
            self._on_sending(job.item.uri)
        try:
            with job.source.fetch(job.item) as payload:
                sent = start_send(
                    assoc,
                    job.header,
                    payload,
                    allow_lossy=s.allow_lossy,
                    forced_syntax=s.transfer_syntax,
                )
        except AssociationLost as exc:
            self._forget(assoc)
            lane.assoc = None
            self._retry_or_fail(job, sched, result, f"outcome unknown: {exc}", None)
            return
        except SourceError as exc:
            self._fail(result, job, str(exc), None)
            sched.done()
            return
        except MigratorError as exc:  # transient S3 errors and the like
            self._retry_or_fail(job, sched, result, str(exc), None)
            return
        if isinstance(sent, SendResult):
            self._settle(lane, job, sent, sched, result)
        else:
            lane.job, lane.pending = job, sent

    def _finish(self, lane: _Lane, sched: Scheduler[_Job], result: StoreResult) -> None:
        """Read the response to ``lane``'s request and settle its file."""
        job, pending, assoc = lane.job, lane.pending, lane.assoc
        assert job is not None and pending is not None and assoc is not None
        lane.job = lane.pending = None
        try:
            sent = finish_send(assoc, pending)
        except AssociationLost as exc:
            self._forget(assoc)
            lane.assoc = None
            self._retry_or_fail(job, sched, result, f"outcome unknown: {exc}", None)
            return
        self._settle(lane, job, sent, sched, result)

    def _settle(
        self, lane: _Lane, job: _Job, sent: SendResult, sched: Scheduler[_Job], result: StoreResult
    ) -> None:
        if sent.outcome in (st.Outcome.STORED, st.Outcome.WARNING):
            outcome = self._outcome(job, State.STORED, sent.error, sent.status)
            outcome.ts_sent, outcome.transcoded = sent.ts_sent, sent.transcoded
            outcome.warning = sent.outcome is st.Outcome.WARNING
            outcome.bytes = job.item.size
            outcome.seconds = sent.seconds
            self._record(result, outcome)
            sched.done()
            return
        if sent.outcome is st.Outcome.TRANSIENT:
            # Out of resources: back off and re-send on a fresh association.
            if lane.assoc is not None:
                self._forget(lane.assoc, release=True)
                lane.assoc = None
            self._retry_or_fail(job, sched, result, sent.error, sent.status, sent.ts_sent)
            return
        self._fail(result, job, sent.error, sent.status, sent.ts_sent, sent.transcoded)
        sched.done()

    def _associate(self, profile: Profile) -> Association:
        s = self.settings
        assoc = Association.request(
            s.host,
            s.port,
            s.called_ae,
            s.calling_ae,
            list(profile.contexts),
            max_pdu=s.max_pdu,
            timeouts=s.timeouts,
            # Built once per process (cached); a bad file fails send() before any thread.
            tls=s.tls.client_context() if s.tls else None,
        )
        with self._lock:
            self._live.add(assoc)
        return assoc

    def _forget(self, assoc: Association, *, release: bool = False) -> None:
        if release:
            assoc.release()
        with self._lock:
            self._live.discard(assoc)

    def _retry_or_fail(
        self,
        job: _Job,
        sched: Scheduler[_Job],
        result: StoreResult,
        reason: str,
        status: int | None,
        ts_sent: str = "",
    ) -> None:
        if job.attempts <= self.settings.retries:
            sched.retry(job, self._backoff(job.attempts))
            return
        self._fail(
            result, job, f"{reason} (gave up after {job.attempts} attempts)", status, ts_sent
        )
        sched.done()

    def _backoff(self, attempt: int) -> float:
        return float(min(_MAX_BACKOFF, self.settings.retry_backoff * 2 ** (attempt - 1)))

    def _outcome(self, job: _Job, state: State, reason: str, status: int | None) -> FileOutcome:
        h = job.header
        return FileOutcome(
            job.item.uri,
            state,
            reason,
            status,
            sop_class_uid=h.sop_class_uid,
            sop_instance_uid=h.sop_instance_uid,
            ts_original=h.transfer_syntax,
            attempts=job.attempts,
        )

    def _fail(
        self,
        result: StoreResult,
        job: _Job,
        reason: str,
        status: int | None,
        ts_sent: str = "",
        transcoded: bool = False,
    ) -> None:
        outcome = self._outcome(job, State.FAILED, reason, status)
        outcome.ts_sent, outcome.transcoded = ts_sent, transcoded
        self._record(result, outcome)

    def _record(self, result: StoreResult, outcome: FileOutcome) -> None:
        with self._lock:
            result.outcomes.append(outcome)
        callback = self._on_sent if outcome.state is State.STORED else self._on_error
        if callback:
            callback(outcome)


def _source_name(source: Source) -> str:
    return str(getattr(source, "path", None) or getattr(source, "uri", None) or source)
