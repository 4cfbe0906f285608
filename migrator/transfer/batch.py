"""One batch of a migration job, sent by one process: what a Celery task (and `run`'s own
inline sender) calls.

Around the transfer core (``migrator.transfer.policy``, the same per-file policy as
`store`) it adds what a fleet needs: a lease on the batch (a second delivery of a running
batch is refused), skipping what a previous delivery stored, the poison rule (a batch that
killed its worker three times fails instead of killing workers for ever), SOP Instance UID
claims in the job's ledger (duplicates across batches and workers), the fleet-wide rate
limiter and association slots, and outcomes written to the ledger in small groups (one
round trip per group), so that a killed worker loses little and a redelivered batch skips
what was already stored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from migrator import control, duplicates
from migrator.childproc import pid_alive
from migrator.dicomfile import DicomHeader
from migrator.errors import (
    AssociationRejected,
    BatchBusy,
    DestinationUnavailable,
    DestinationUnhealthy,
    JobGone,
    JobPaused,
    ScheduledPause,
)
from migrator.keys import PREFIX, slots_wanted_key
from migrator.ledger import Ledger, PlannedFile, Recorded, split_id
from migrator.limits.breaker import Open
from migrator.outcomes import FileOutcome, State
from migrator.settings import Settings
from migrator.sources import SourceCache, expect
from migrator.sources.base import SourceItem
from migrator.sources.inspect import inspect_with_retries, refusal
from migrator.transfer.job import Job
from migrator.transfer.ledgerclaims import LedgerClaims
from migrator.transfer.observe import Observer
from migrator.transfer.policy import Transfer
from migrator.transfer.runtime import Runtime
from migrator.transfer.takeover import found_at_destination
from migrator.transfer.transform import make_transform

log = logging.getLogger(__name__)

#: A batch delivered this many times without finishing has killed its worker each time.
POISON_DELIVERIES = 3
#: Outcomes are flushed to the ledger after this many files or seconds. A flush is one
#: script of ~10 Redis commands; 64 files keep it near 0.15 commands per file (16: 0.6). What
#: it risks: a worker killed before a flush sends up to that many files again (idempotent).
FLUSH_FILES = 64
FLUSH_SECONDS = 0.25
#: Lease of the process running a batch, refreshed at a flush once LEASE_REFRESH old.
LEASE_TTL = 30.0
LEASE_REFRESH = 5.0
#: A PACS that turned an association away as busy (A-ASSOCIATE-RJ transient: too many
#: associations) is remembered fleet-wide for this long. Meanwhile every worker gives its
#: associations back at the end of each batch: held while the worker is idle, they would
#: keep the workers that have batches out until the PACS closed them.
BUSY_MEMORY = 600.0

#: In the lease token of `run`'s own sender; a batch it holds is looked at again this soon.
INLINE_TAG = "inline-"
INLINE_RECHECK = 1.0

#: How a file fails when its batch could not use the PACS at all (``FileOutcome.cause``).
UNREACHABLE = "unreachable"
REJECTED = "rejected"


@dataclass(slots=True)
class BatchSummary:
    batch_id: str
    sent: int = 0
    skipped_already_stored: int = 0
    stored: int = 0
    failed: int = 0
    #: Planned from a manifest, found not to be sendable when its header was read here
    refused: int = 0
    #: Not sent: another file has the same SOP Instance UID and the same bytes (skipped)...
    duplicates: int = 0
    #: ...or different bytes (failed: conflict)
    conflicts: int = 0
    poison: bool = False


def run_batch(
    ledger: Ledger,
    batch_id: str,
    runtime: Runtime,
    *,
    task_id: str | None = None,
    worker: str | None = None,
    may_wait: bool = True,
    stop: Callable[[], bool] | None = None,
) -> BatchSummary:
    """Send what is left of one batch.

    Raises BatchBusy while another delivery runs it, JobGone when the job left Redis,
    DestinationUnavailable / Deferred / WouldWait when it stopped early (what was sent is
    recorded; the rest stays in flight for the next delivery)."""
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    # `run`'s own sender marks its leases: it gives a batch up at the first retry it would
    # need, so a worker finding one held by it looks again soon.
    token = f"{worker}:{INLINE_TAG if not may_wait else ''}{uuid.uuid4().hex[:8]}"
    # Which incarnation of the job this delivery belongs to: a job lost with Redis's data
    # and planned again has the same id but another creation time.
    created = ledger.meta().get("created")
    if created is None:
        raise JobGone(ledger.job_id)
    # Paused or cancelled (migrator/control.py): looked at before the batch and while it
    # is sent; a cancelled batch settles what it did not send as skipped.
    watch = control.Watch(ledger.client, ledger.job_id)
    if watch() and watch.state == control.PAUSED:
        raise JobPaused(ledger.job_id, control.PAUSE_RECHECK)
    if not _claim(ledger, batch_id, token):
        holder = ledger.batch_holder(batch_id) or ""
        wait = INLINE_RECHECK if INLINE_TAG in holder else ledger.batch_lease_ttl(batch_id)
        raise BatchBusy(batch_id, wait)
    try:
        settings = Settings.from_dict(ledger.config())
    except KeyError:
        ledger.release_batch(batch_id, token)
        raise JobGone(ledger.job_id) from None
    recorder = _Recorder(ledger, batch_id, token, worker, created, runtime.observer(settings))
    try:
        if settings.schedule:
            # In a rate=0 window (ScheduledPause): back when it ends, no association opened.
            runtime.limiter(settings).reserve(0, 0)
        with runtime.sending(settings, ledger.job_id):
            return _run_claimed(
                ledger, settings, batch_id, recorder, runtime, task_id, may_wait, stop, watch
            )
    except ScheduledPause:
        runtime.pool(settings).close_all()  # the PACS is left alone during a rate=0 window
        raise
    finally:
        ledger.release_batch(batch_id, token)
        if not recorder.pending and not recorder.unanswered:  # nothing unknown left
            ledger.close_deliveries(batch_id, [token])
        dest = settings.destination
        if watch.state is not None:
            runtime.pool(settings).close_all()  # a paused job holds no association
        elif ledger.client.exists(busy_key(dest)) or (
            (settings.max_associations or settings.schedule)
            and ledger.client.exists(slots_wanted_key(dest))
        ):
            # With a PACS that limits associations itself, or under a fleet-wide cap that
            # another sender found full, an idle association holds a slot that a sender
            # with work waits for: give it back between batches. (Otherwise keep it for the
            # next batch: reopening dozens per batch costs round trips on a long link.)
            runtime.pool(settings).close_all()


def _run_claimed(
    ledger: Ledger,
    settings: Settings,
    batch_id: str,
    recorder: _Recorder,
    runtime: Runtime,
    task_id: str | None,
    may_wait: bool,
    stop: Callable[[], bool] | None,
    watch: control.Watch,
) -> BatchSummary:
    task_id = task_id or batch_id
    summary = BatchSummary(batch_id)
    files = ledger.batch(batch_id)
    recorder.plan = files
    if watch.state == control.CANCELLED:
        for file_id, outcome, _ in control.cancelled_entries(ledger.batch_states(batch_id), files):
            recorder.pending.append((file_id, outcome, time.time()))
        recorder.flush()
        # Settled: what a lost delivery left unknown no longer matters to a later one.
        ledger.close_deliveries(batch_id, ledger.open_delivery(batch_id, recorder.token))
        return summary
    stored = ledger.stored_ids([f.file_id for f in files])
    summary.skipped_already_stored = len(stored)
    # Only files without an outcome: a failed file is sent again when `retry` puts it back
    # in flight, never by a late delivery of its batch (a retry message a stopped worker
    # handed back, found by the next command's workers, re-sent a job's failed files
    # before `retry` could count them: "0 failed files sent again").
    todo = [f for f in files if f.file_id not in stored and _unsettled(recorder.states, f)]
    # A delivery that did not end in good order may have sent files it never recorded:
    # those the destination holds are recorded stored, not sent again (transfer/takeover.py).
    lost = ledger.open_delivery(batch_id, recorder.token)
    if lost and todo:
        found = found_at_destination(ledger, settings, batch_id, todo)
        for planned, outcome in found:
            recorder.add(planned, outcome)
        summary.stored += len(found)
        done = {planned.file_id for planned, _ in found}
        todo = [f for f in todo if f.file_id not in done]
    if recorder.pending:  # before the poison and give-up paths read the ledger
        recorder.flush()
    ledger.close_deliveries(batch_id, lost)
    if not todo:
        ledger.delivery_done(task_id)
        return summary
    deliveries = ledger.deliveries(task_id)
    if deliveries > POISON_DELIVERIES:
        # Every earlier start died mid-batch (the worker was killed each time): some file
        # kills the process. Fail what is left instead of killing workers for ever.
        reason = f"poison: the batch killed its worker {deliveries - 1} times; not retried"
        fail_unsettled(ledger, batch_id, reason, recorder=recorder)
        ledger.delivery_done(task_id)
        summary.poison = True
        summary.failed = len(todo)
        return summary

    breaker = runtime.breaker(settings)
    given_up = _give_up(settings, breaker.state())
    if given_up is not None:
        summary.failed = fail_unsettled(
            ledger, batch_id, given_up, cause=UNREACHABLE, recorder=recorder
        )
        ledger.delivery_done(task_id)
        return summary
    sources = SourceCache(settings)
    jobs = _jobs(ledger, batch_id, todo, sources, recorder, summary, settings)
    by_id = {job.ref.file_id: job for job in jobs}

    def record(job: Job, outcome: FileOutcome) -> None:
        recorder.add(job.ref, outcome, observed=True)
        _count(summary, outcome)

    transfer = Transfer(
        settings,
        runtime.pool(settings),
        runtime.limiter(settings),
        record,
        claims=LedgerClaims(ledger, sources, by_id),
        transform=make_transform(settings),
        observer=runtime.observer(settings),
        breaker=breaker,
        autotune=runtime.autotune(settings),
        may_wait=may_wait,
        stop=(lambda: watch() or stop()) if stop is not None else watch,
        tick=recorder.flush_if_due,
        on_start=recorder.before_send,
    )
    try:
        ended = transfer.run(jobs)
        error = ended.error
        if ended.left and watch.state == control.CANCELLED:
            for job in ended.left:
                recorder.add(job.ref, control.skipped_cancelled(job.ref))
        elif ended.left and watch.state == control.PAUSED:
            raise JobPaused(ledger.job_id, control.PAUSE_RECHECK)  # the rest stays in flight
        elif isinstance(error, AssociationRejected) and not error.transient:
            # Rejected for good (wrong AE title...): what is left of the batch fails.
            for job in ended.left:
                recorder.add(job.ref, _failed(job.ref, str(error), REJECTED))
                summary.failed += 1
        elif isinstance(error, DestinationUnavailable | DestinationUnhealthy) and (
            why := _give_up(settings, breaker.state())
        ):
            # The destination has been failing for longer than --give-up-after.
            for job in ended.left:
                recorder.add(job.ref, _failed(job.ref, why, UNREACHABLE))
                summary.failed += 1
        elif isinstance(error, DestinationUnavailable):
            if error.rejected:  # busy: have every worker stop holding idle associations
                ledger.client.set(busy_key(settings.destination), 1, px=int(BUSY_MEMORY * 1000))
            raise error
        elif error is not None:
            raise error
    finally:
        # Files on the wire when an exception ended it (Celery's soft time limit): their
        # outcome is unknown, so this delivery does not end in good order, and the next
        # one asks the destination for them instead of sending them twice (takeover.py).
        # Noted first: the flush below may raise (the lease lost meanwhile).
        recorder.unanswered = len(transfer.unanswered)
        # Whatever ends the batch (done, PACS unreachable, soft time limit), what was sent
        # is recorded, so a later delivery does not send it again; and this start was not
        # a death of the process (only those count towards poison).
        recorder.flush()
        ledger.delivery_done(task_id)
    # Settled: rewrite the outcome lines without the growth slack of appends.
    ledger.compact_outcomes(batch_id)
    return summary


def _unsettled(states: str, planned: PlannedFile) -> bool:
    """No outcome yet ("." in the batch's states as this delivery began; a file beyond the
    states string was never written: no outcome either)."""
    index = split_id(planned.file_id)[1]
    return index >= len(states) or states[index] == "."


def _jobs(
    ledger: Ledger,
    batch_id: str,
    todo: list[PlannedFile],
    sources: SourceCache,
    recorder: _Recorder,
    summary: BatchSummary,
    settings: Settings,
) -> list[Job]:
    """The batch's files as jobs. A file planned from a manifest carries no SOP class or
    syntax yet: its header is read now (the association's contexts come from it), the
    plan is updated with what was learnt, and a file that cannot be sent is settled."""
    jobs = []
    learnt = False
    # The old PACS fetches the batch's instances series by series (one request each).
    expect((sources(f.uri), SourceItem(f.uri, f.size, f.version)) for f in todo)
    for f in todo:
        item = SourceItem(f.uri, f.size, f.version)
        source = sources(f.uri)
        if f.sop_class_uid:
            # A dataset-only file (offset 0) is read again: its report carries a note on
            # how its encoding was recognised, which the plan does not keep.
            offset = f.dataset_offset if f.dataset_offset > 0 else -1
            header = DicomHeader(
                f.sop_class_uid,
                f.sop_instance_uid,
                f.transfer_syntax,
                f.study_uid,
                "",
                offset,
                f.size,
                offset > 0,
            )
            jobs.append(Job(item, source, header, ref=f, planned=True))
            continue
        read = inspect_with_retries(source, item, settings.retries, settings.retry_backoff)
        problem = refusal(read)
        if problem is not None:
            recorder.add(f, _failed(f, problem[1], state=problem[0]))
            summary.refused += 1
            continue
        assert isinstance(read, DicomHeader)
        if f.sop_instance_uid and f.sop_instance_uid != read.sop_instance_uid:
            reason = (
                f"{f.uri}: its SOP Instance UID is not the one the manifest gives "
                f"({read.sop_instance_uid} in the file); not sent"
            )
            recorder.add(f, _failed(f, reason))
            summary.failed += 1
            continue
        learnt = True
        f = dataclasses.replace(
            f,
            size=f.size or read.size,
            sop_class_uid=read.sop_class_uid,
            sop_instance_uid=read.sop_instance_uid,
            transfer_syntax=read.transfer_syntax,
            study_uid=f.study_uid or read.study_uid,
            dataset_offset=read.dataset_offset,
        )
        jobs.append(Job(SourceItem(f.uri, f.size, f.version), source, read, ref=f))
    if learnt:
        # The plan keeps what the headers said: reports name the SOP classes and syntaxes,
        # and a later delivery (or a duplicate's owner check) need not read them again.
        plan = {p.file_id: p for p in recorder.plan}
        plan.update({j.ref.file_id: j.ref for j in jobs})
        recorder.plan = [plan[p.file_id] for p in recorder.plan]
        ledger.update_plan(batch_id, recorder.plan)
    return jobs


def _count(summary: BatchSummary, outcome: FileOutcome) -> None:
    group = duplicates.group_reason(outcome.reason) if outcome.state is not State.STORED else None
    if group == duplicates.DUPLICATE_GROUP:
        summary.duplicates += 1
        return
    if group == duplicates.CONFLICT_GROUP:
        summary.conflicts += 1
        summary.failed += 1
        return
    summary.sent += 1
    if outcome.state is State.STORED:
        summary.stored += 1
    else:
        summary.failed += 1


class _Recorder:
    """Buffers outcomes and writes them in groups; keeps the batch lease alive."""

    def __init__(
        self,
        ledger: Ledger,
        batch_id: str,
        token: str,
        worker: str,
        created: float,
        observer: Observer,
    ) -> None:
        self.ledger = ledger
        self.observer = observer
        self.batch_id = batch_id
        self.token = token
        self.worker = worker
        self.created = created
        self.plan: list[PlannedFile] = []
        self.pending: list[Recorded] = []
        self.last = time.monotonic()
        self.refreshed = time.monotonic()
        self.lost = False  # the lease went to another delivery: only write what is pending
        #: files sent with no answer read when an exception ended the delivery
        self.unanswered = 0
        #: the batch's file states when this delivery began, and the files it wrote since
        self.states = ledger.batch_states(batch_id)
        self.written: set[int] = set()

    def add(self, planned: PlannedFile, outcome: FileOutcome, *, observed: bool = False) -> None:
        """``observed``: the transfer core told the observer already (metrics count each
        outcome once, as the ledger does)."""
        self.pending.append((planned.file_id, outcome, time.time()))
        if not observed:
            self.observer.file_done(outcome)
        if len(self.pending) >= FLUSH_FILES or time.monotonic() - self.last > FLUSH_SECONDS:
            self.flush()

    def flush_if_due(self) -> None:
        """Outcomes held longer than FLUSH_SECONDS go to the ledger now (the sender is about
        to wait), so that a crash never re-sends files settled longer ago than that."""
        if self.pending and time.monotonic() - self.last > FLUSH_SECONDS:
            self.flush()

    def before_send(self, job: Job) -> None:
        """Not a file more once the lease may be lost: this process waited longer than the
        lease lasts (Redis unreachable, a long limiter wait); another delivery may hold it."""
        if time.monotonic() - self.refreshed > LEASE_TTL:
            self.flush()

    def flush(self) -> None:
        # Outcomes are written only into the job this batch belongs to: the script checks
        # the job's creation stamp (a job lost and planned anew has another, and its files
        # are not these), so a lost job shows here as JobGone and nothing is written.
        now = time.monotonic()
        lost = self.lost
        if not lost and (now - self.refreshed > LEASE_REFRESH or not self.pending):
            lost = not self._refresh(now)
        if self.pending:
            self.ledger.record_many(
                self.pending, worker=self.worker, plan=self.plan, created=self.created
            )
            self.written.update(split_id(fid)[1] for fid, _, _ in self.pending)
            self.pending = []
        if not lost and time.monotonic() - now > LEASE_REFRESH:
            lost = not self._refresh(time.monotonic())  # the write waited for Redis
        if lost and not self.lost:  # what was sent is recorded (idempotent); a delivery
            self.lost = True  # sends the rest. Raised once: the final flush only writes.
            raise BatchBusy(self.batch_id, self.ledger.batch_lease_ttl(self.batch_id))
        self.last = now

    def _refresh(self, now: float) -> bool:
        """Extend the batch lease; False when another delivery may have run the batch.

        Why (issue 22): a process cut from Redis longer than LEASE_TTL loses its lease;
        `retry --in-flight` or the visibility timeout hands the batch to another worker;
        going on after the partition re-sent what that one had stored (38 files twice in
        tests/test_fleet.py). A lease that merely expired (a long limiter wait, a partition
        nobody acted on) is taken back when the batch's outcomes are still only ours."""
        if self.ledger.refresh_batch(self.batch_id, self.token, LEASE_TTL):
            self.refreshed = now
            return True
        if self.ledger.meta().get("created") != self.created:
            raise JobGone(self.ledger.job_id)
        if self.ledger.claim_batch(self.batch_id, self.token, LEASE_TTL):
            if not self._settled_by_others():
                self.refreshed = now
                return True
            self.ledger.release_batch(self.batch_id, self.token)
        log.warning(
            "batch %s: lease lost for %.0f s and the batch sent by another worker "
            "meanwhile; stopping (its next delivery skips what is stored)",
            self.batch_id,
            now - self.refreshed,
        )
        return False

    def _settled_by_others(self) -> bool:
        """A file in flight when this delivery started has an outcome it did not write."""
        now = self.ledger.batch_states(self.batch_id)
        return any(
            was == "." and i < len(now) and now[i] != "." and i not in self.written
            for i, was in enumerate(self.states)
        )


def fail_unsettled(
    ledger: Ledger,
    batch_id: str,
    reason: str,
    *,
    cause: str = "",
    recorder: _Recorder | None = None,
) -> int:
    """Fail every file of the batch that has no outcome yet (a batch given up on);
    returns how many."""
    files = ledger.batch(batch_id)
    stored = ledger.stored_ids([f.file_id for f in files])
    now = time.time()
    entries: list[Recorded] = [
        (f.file_id, _failed(f, reason, cause), now) for f in files if f.file_id not in stored
    ]
    if recorder is not None:
        for file_id, outcome, _ in entries:
            recorder.pending.append((file_id, outcome, now))
            recorder.observer.file_done(outcome)
        recorder.flush()
    else:
        ledger.record_many(entries)
    return len(entries)


def _give_up(settings: Settings, state: Open | None) -> str | None:
    """The reason to fail the unsent files of a job whose destination has been failing for
    longer than ``--give-up-after``; None to keep waiting."""
    if state is None or settings.give_up_after is None:
        return None
    if time.time() - state.since < settings.give_up_after:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.since))
    return (
        f"gave up: {settings.server} has been failing since {when} ({state.reason}); "
        f"not sent (--give-up-after {settings.give_up_after:g} s)"
    )


def busy_key(destination: str) -> str:
    """Set while the PACS rejects associations as busy (per destination, as the limiter)."""
    return f"{PREFIX}:busy:{{{destination}}}"


def _claim(ledger: Ledger, batch_id: str, token: str) -> bool:
    if ledger.claim_batch(batch_id, token, LEASE_TTL):
        return True
    # A holder on this host whose process is gone was SIGKILLed (a pool child killed
    # mid-batch, redelivered at once): take over now instead of waiting for its lease.
    holder = ledger.batch_holder(batch_id)
    if holder is None:
        return ledger.claim_batch(batch_id, token, LEASE_TTL)
    host, _, rest = holder.partition(":")
    pid = rest.split(":", 1)[0]
    if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
        log.warning("batch %s: its previous worker (pid %s) died; taking over", batch_id, pid)
        ledger.release_batch(batch_id, holder)
        return ledger.claim_batch(batch_id, token, LEASE_TTL)
    return False


def _failed(
    planned: PlannedFile, reason: str, cause: str = "", state: State = State.FAILED
) -> FileOutcome:
    return FileOutcome(
        planned.uri,
        state,
        reason,
        sop_class_uid=planned.sop_class_uid,
        sop_instance_uid=planned.sop_instance_uid,
        ts_original=planned.transfer_syntax,
        cause=cause,
    )
