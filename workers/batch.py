"""One batch of a migration job, sent by one worker process: the logic behind the task.

Per file: skip if the ledger says it is stored (redelivered batch) -> claim its SOP
Instance UID (one round trip for the batch; a later file with a UID another file claimed is
compared with it and settled as a duplicate or a conflict, never sent) -> acquire from the
fleet-wide limiter -> fetch -> re-inspect (the file may have changed since planning) ->
send on the pooled association -> classify -> record. Transient statuses and lost
associations are retried inside the batch with backoff, on a fresh association; the batch
stays short because the number of attempts is bounded. Outcomes are written to the ledger
in small groups (one round trip per group) so a killed worker loses little and a
redelivered batch skips what was already stored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from migrator import duplicates
from migrator import status as st
from migrator.dicomfile import DicomHeader, inspect_bytes, inspect_file
from migrator.dul.association import Association, AssociationLost
from migrator.errors import AssociationRejected, ConnectError, MigratorError, SourceError
from migrator.jobconfig import JobConfig
from migrator.keys import PREFIX
from migrator.ledger import Ledger, PlannedFile, Recorded
from migrator.limits.rate import RateLimiter
from migrator.outcomes import FileOutcome, State
from migrator.sources.base import Payload, Source, SourceItem
from migrator.sources.filesystem import FileSource
from migrator.sources.inspect import inspect_item, refusal
from workers import metrics
from workers.pool import AssociationPool
from workers.sender import send_file

log = logging.getLogger(__name__)

#: A batch delivered this many times without finishing has killed its worker each time.
POISON_DELIVERIES = 3
#: Outcomes are flushed to the ledger after this many files or seconds. A flush is one
#: script of ~10 Redis commands; 64 files keep it near 0.15 commands per file (16: 0.6). What
#: it risks: a worker killed before a flush sends up to that many files again (idempotent).
FLUSH_FILES = 64
FLUSH_SECONDS = 0.25
#: Files reserved from the rate limiter in one round trip (at most the burst).
LEASE_FILES = 10
#: Lease of the worker running a batch; refreshed at every flush.
LEASE_TTL = 30.0
#: A PACS that turned an association away as busy (A-ASSOCIATE-RJ transient: too many
#: associations) is remembered fleet-wide for this long. Meanwhile every worker gives its
#: association back at the end of each batch: held while the worker is idle, it would keep
#: the workers that have batches out until the PACS closed it.
BUSY_MEMORY = 600.0


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


class _Sources:
    """Turns a planned URI back into something that can be fetched."""

    def __init__(self, config: JobConfig) -> None:
        self._config = config
        self._s3: dict[str, Source] = {}

    def for_uri(self, uri: str) -> Source:
        if not uri.startswith("s3://"):
            return FileSource(uri)
        bucket = uri[5:].split("/", 1)[0]
        if bucket not in self._s3:
            from migrator.sources.s3 import S3Settings, S3Source

            settings = S3Settings(
                endpoint_url=self._config.s3_endpoint, region=self._config.s3_region
            )
            self._s3[bucket] = S3Source(f"s3://{bucket}/", settings)
        return self._s3[bucket]


def run_batch(
    ledger: Ledger,
    batch_id: str,
    *,
    pool: AssociationPool,
    limiter: RateLimiter,
    task_id: str | None = None,
    worker: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchSummary:
    """Send what is left of one batch. Raises BatchBusy while another delivery runs it."""
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    token = f"{worker}:{uuid.uuid4().hex[:8]}"
    # Which incarnation of the job this delivery belongs to: a job lost with Redis's data
    # and planned again has the same id but another creation time.
    created = ledger.meta().get("created")
    if created is None:
        raise JobGone(ledger.job_id)
    if not _claim(ledger, batch_id, token):
        raise BatchBusy(batch_id, ledger.batch_lease_ttl(batch_id))
    try:
        config = JobConfig.from_dict(ledger.config())
    except KeyError:
        ledger.release_batch(batch_id, token)
        raise JobGone(ledger.job_id) from None
    try:
        return _run_claimed(
            ledger,
            config,
            batch_id,
            token,
            created,
            pool,
            limiter,
            task_id or batch_id,
            worker,
            sleep,
        )
    finally:
        ledger.release_batch(batch_id, token)
        if config.max_associations or ledger.client.exists(_busy_key(config.destination)):
            # Under a fleet-wide cap, or with a PACS that limits associations itself, an
            # idle association would hold a slot that a worker with work is waiting for:
            # give it back between batches.
            pool.close_all()


class BatchBusy(Exception):
    """Another delivery of the same batch is running (Redis delivered it twice)."""

    def __init__(self, batch_id: str, retry_in: float) -> None:
        super().__init__(f"batch {batch_id} is being sent by another worker")
        self.retry_in = retry_in


class JobGone(Exception):
    """The job is no longer in Redis (its data was lost), or was lost and planned again:
    what this delivery would record has no place in the ledger, or would land in the new
    plan's files. The batch stops; nothing is retried."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id} is gone from Redis (restarted without persistence, flushed or "
            "evicted?) or was planned anew since this batch was queued"
        )
        self.job_id = job_id


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
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        log.warning("batch %s: its previous worker (pid %s) died; taking over", batch_id, pid)
        ledger.release_batch(batch_id, holder)
        return ledger.claim_batch(batch_id, token, LEASE_TTL)
    return False


def _busy_key(destination: str) -> str:
    """Set while the PACS rejects associations as busy (per destination, as the limiter)."""
    return f"{PREFIX}:busy:{{{destination}}}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Recorder:
    """Buffers outcomes and writes them in groups; keeps the batch lease alive."""

    def __init__(
        self,
        ledger: Ledger,
        batch_id: str,
        token: str,
        worker: str,
        destination: str,
        created: float,
        plan: list[PlannedFile],
    ) -> None:
        self.ledger = ledger
        self.plan = plan
        self.destination = destination
        self.batch_id = batch_id
        self.token = token
        self.worker = worker
        self.created = created
        self.pending: list[Recorded] = []
        self.last = time.monotonic()

    def add(self, planned: PlannedFile, outcome: FileOutcome) -> None:
        self.pending.append((planned.file_id, outcome, time.time()))
        log.debug("%s: %s %s", planned.uri, outcome.state, outcome.reason)
        metrics.file_done(self.destination, outcome)
        if len(self.pending) >= FLUSH_FILES or time.monotonic() - self.last > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        # The lease first: losing it is how a lost (or lost and re-planned) job shows, and
        # then nothing may be written: the outcomes would go to another plan's files.
        if (
            not self.ledger.refresh_batch(self.batch_id, self.token, LEASE_TTL)
            and self.ledger.meta().get("created") != self.created
        ):
            raise JobGone(self.ledger.job_id)
        if self.pending:
            self.ledger.record_many(self.pending, worker=self.worker, plan=self.plan)
            self.pending = []
        self.last = time.monotonic()


def _run_claimed(
    ledger: Ledger,
    config: JobConfig,
    batch_id: str,
    token: str,
    created: float,
    pool: AssociationPool,
    limiter: RateLimiter,
    task_id: str,
    worker: str,
    sleep: Callable[[float], None],
) -> BatchSummary:
    summary = BatchSummary(batch_id)
    files = ledger.batch(batch_id)
    stored = ledger.stored_ids([f.file_id for f in files])
    todo = [f for f in files if f.file_id not in stored]
    summary.skipped_already_stored = len(files) - len(todo)
    if not todo:
        ledger.delivery_done(task_id)
        return summary
    recorder = _Recorder(ledger, batch_id, token, worker, config.destination, created, files)
    deliveries = ledger.deliveries(task_id)
    if deliveries > POISON_DELIVERIES:
        # Every earlier start died mid-batch (the worker was killed each time): some file
        # kills the process. Fail what is left instead of killing workers forever.
        reason = f"poison: the batch killed its worker {deliveries - 1} times; not retried"
        for f in todo:
            recorder.add(f, _outcome(f, State.FAILED, reason, None, 0))
        recorder.flush()
        ledger.delivery_done(task_id)
        summary.poison = True
        summary.failed = len(todo)
        return summary

    sources = _Sources(config)
    connector = _Connector(pool, config, sleep, ledger.client)
    try:
        if any(not f.sop_class_uid for f in todo):
            todo = _read_headers(todo, sources, recorder, summary)
        todo = _settle_duplicates(ledger, todo, sources, recorder, summary)
        pairs = {(f.sop_class_uid, f.transfer_syntax) for f in todo}
        leases = _Leases(limiter, todo, config)
        for n, planned in enumerate(todo):
            try:
                outcome = _send_with_retries(
                    planned, config, pairs, connector, leases, sources, sleep
                )
            except AssociationRejected as exc:
                # A permanent rejection (wrong AE title...) fails what is left of the batch.
                for f in todo[n:]:
                    recorder.add(f, _outcome(f, State.FAILED, str(exc), None, 0))
                summary.failed += len(todo) - n
                break
            summary.sent += 1
            if outcome.state is State.STORED:
                summary.stored += 1
            else:
                summary.failed += 1
            recorder.add(planned, outcome)
            if config.throttle_delay:
                sleep(config.throttle_delay)
    finally:
        # Whatever ends the loop (done, PACS unreachable, soft time limit), what was sent
        # is recorded, so a later delivery does not send it again; and this start was not
        # a death of the process (only those count towards poison).
        recorder.flush()
        ledger.delivery_done(task_id)
    # Settled: rewrite the outcome lines without the growth slack of appends.
    ledger.compact_outcomes(batch_id)
    return summary


def _read_headers(
    todo: list[PlannedFile], sources: _Sources, recorder: _Recorder, summary: BatchSummary
) -> list[PlannedFile]:
    """Files planned from a manifest carry no SOP class or syntax yet: read their headers
    now (the association's contexts come from them) and settle those that cannot be sent."""
    ready = []
    for f in todo:
        if f.sop_class_uid:
            ready.append(f)
            continue
        item = SourceItem(f.uri, f.size, f.version)
        header = inspect_item(sources.for_uri(f.uri), item)
        problem = refusal(header)
        if problem is not None:
            recorder.add(f, _outcome(f, problem[0], problem[1], None, 0))
            summary.refused += 1
            continue
        assert isinstance(header, DicomHeader)
        if f.sop_instance_uid and f.sop_instance_uid != header.sop_instance_uid:
            reason = (
                f"{f.uri}: its SOP Instance UID is not the one the manifest gives "
                f"({header.sop_instance_uid} in the file); not sent"
            )
            recorder.add(f, _outcome(f, State.FAILED, reason, None, 0))
            summary.failed += 1
            continue
        ready.append(
            dataclasses.replace(
                f,
                size=f.size or header.size,
                sop_class_uid=header.sop_class_uid,
                sop_instance_uid=header.sop_instance_uid,
                transfer_syntax=header.transfer_syntax,
                study_uid=f.study_uid or header.study_uid,
            )
        )
    return ready


def _settle_duplicates(
    ledger: Ledger,
    todo: list[PlannedFile],
    sources: _Sources,
    recorder: _Recorder,
    summary: BatchSummary,
) -> list[PlannedFile]:
    """Claim the SOP Instance UIDs of the files about to be sent (one round trip for the
    batch) and settle the files whose UID another file claimed first: compared with that
    file, skipped when identical, failed as a conflict when not (migrator/duplicates.py).
    Returns the files to send. A redelivered or retried batch owns its own claims."""
    owners = ledger.claim_uids(todo)
    if not any(owners):
        return todo
    here = {f.file_id: f for f in todo}
    away = sorted({o for o in owners if o and o not in here})
    elsewhere = {p.file_id: p for p in ledger.files(away)} if away else {}
    ready = []
    for f, owner_id in zip(todo, owners, strict=True):
        owner = (here.get(owner_id) or elsewhere.get(owner_id)) if owner_id else None
        if owner is None:
            if owner_id:
                log.warning("file %s: its UID's owner %s is not in the plan", f.file_id, owner_id)
            ready.append(f)
            continue
        try:
            verdict = duplicates.settle(_copy(f, sources), _copy(owner, sources))
        except MigratorError as exc:  # this file cannot be read: as sending would have failed
            recorder.add(f, _outcome(f, State.FAILED, str(exc), None, 0))
            summary.failed += 1
            continue
        if verdict is None:  # another UID with the same hash: not a duplicate
            ready.append(f)
            continue
        state, reason = verdict
        recorder.add(f, _outcome(f, state, reason, None, 0))
        if state is State.SKIPPED:
            summary.duplicates += 1
        else:
            summary.conflicts += 1
            summary.failed += 1
    return ready


def _copy(f: PlannedFile, sources: _Sources) -> duplicates.Copy:
    return duplicates.Copy(
        sources.for_uri(f.uri), SourceItem(f.uri, f.size, f.version), f.sop_instance_uid
    )


class _Leases:
    """Reserves several files' worth from the fleet-wide limiter at once.

    One reservation costs a Redis script of ~6 commands; taking the next few files of the
    batch with it brings that to under one command per file. A lease never exceeds the
    burst (files, and bytes when bytes are limited), so the limiter's bound on any window,
    rate × seconds + burst, still holds; the files of a lease just go back to back. A
    re-send (second attempt) is charged on its own.
    """

    def __init__(self, limiter: RateLimiter, todo: list[PlannedFile], config: JobConfig) -> None:
        self.limiter = limiter
        self.order = todo
        self.position = {f.file_id: i for i, f in enumerate(todo)}
        self.max_files = max(1, min(LEASE_FILES, config.burst))
        self.max_bytes = config.limits.effective_burst_bytes
        self.prepaid: set[str] = set()

    def take(self, planned: PlannedFile, *, first: bool) -> float:
        if first and planned.file_id in self.prepaid:
            self.prepaid.discard(planned.file_id)
            return 0.0
        group = [planned]
        nbytes = planned.size
        if first:
            for nxt in self.order[self.position.get(planned.file_id, len(self.order)) + 1 :]:
                if len(group) >= self.max_files:
                    break
                if self.max_bytes is not None and nbytes + nxt.size > self.max_bytes:
                    break
                group.append(nxt)
                nbytes += nxt.size
        waited = self.limiter.acquire(len(group), nbytes)
        self.prepaid.update(f.file_id for f in group[1:])
        return waited


class DestinationUnavailable(ConnectError):
    """The PACS could not be reached for this batch after the configured retries."""


class _Connector:
    """Gets an association from the pool, retrying connection failures per batch.

    Connection failures belong to the destination, not to a file: they do not use up a
    file's attempts. After ``retries`` failures in a row the batch gives up for now
    (DestinationUnavailable) and the task is retried later.
    """

    def __init__(
        self,
        pool: AssociationPool,
        config: JobConfig,
        sleep: Callable[[float], None],
        client: redis.Redis,
    ) -> None:
        self.pool = pool
        self.config = config
        self.sleep = sleep
        self.client = client
        self.failures = 0

    def get(self, pairs: set[tuple[str, str]]) -> Association:
        while True:
            try:
                assoc = self.pool.get(self.config, pairs)
            except AssociationRejected as exc:
                if not exc.transient:
                    raise
                error: MigratorError = exc
                # Busy: have every worker stop holding idle associations to this PACS.
                key = _busy_key(self.config.destination)
                self.client.set(key, 1, px=int(BUSY_MEMORY * 1000))
            except ConnectError as exc:
                error = exc
            else:
                self.failures = 0
                return assoc
            self.failures += 1
            if self.failures > self.config.retries:
                why = str(error)
                if isinstance(error, AssociationRejected) and not self.config.max_associations:
                    why += (
                        "; the PACS limits simultaneous associations: give the job "
                        "--max-associations"
                    )
                raise DestinationUnavailable(why) from error
            log.warning("cannot associate (%s); retry %d", error, self.failures)
            self.sleep(_backoff(self.config, self.failures))


def _send_with_retries(
    planned: PlannedFile,
    config: JobConfig,
    pairs: set[tuple[str, str]],
    connector: _Connector,
    leases: _Leases,
    sources: _Sources,
    sleep: Callable[[float], None],
) -> FileOutcome:
    item = SourceItem(planned.uri, planned.size, planned.version)
    source = sources.for_uri(planned.uri)
    attempts = 0
    reason, status, ts_sent = "", None, ""
    while True:
        assoc = connector.get(pairs)
        attempts += 1
        metrics.limiter_waited(config.destination, leases.take(planned, first=attempts == 1))
        try:
            with source.fetch(item) as payload:
                header = _reinspect(payload, planned)
                sent = send_file(
                    assoc,
                    header,
                    payload,
                    allow_lossy=config.allow_lossy,
                    forced_syntax=config.transfer_syntax,
                )
        except AssociationLost as exc:
            connector.pool.discard(assoc)
            reason, status = f"outcome unknown: {exc}", None
        except SourceError as exc:
            return _outcome(planned, State.FAILED, str(exc), None, attempts)
        except MigratorError as exc:  # e.g. transient S3 errors
            reason, status = str(exc), None
        else:
            if sent.outcome in (st.Outcome.STORED, st.Outcome.WARNING):
                out = _outcome(planned, State.STORED, sent.error, sent.status, attempts)
                out.ts_sent, out.transcoded = sent.ts_sent, sent.transcoded
                out.warning = sent.outcome is st.Outcome.WARNING
                out.bytes = planned.size
                out.seconds = sent.seconds
                return out
            reason, status, ts_sent = sent.error, sent.status, sent.ts_sent
            if sent.outcome is not st.Outcome.TRANSIENT:
                out = _outcome(planned, State.FAILED, reason, status, attempts)
                out.ts_sent, out.transcoded = ts_sent, sent.transcoded
                out.seconds = sent.seconds
                return out
            connector.pool.discard(assoc)  # out of resources: back off, fresh association
        if attempts > config.retries:
            out = _outcome(
                planned,
                State.FAILED,
                f"{reason} (gave up after {attempts} attempts)",
                status,
                attempts,
            )
            out.ts_sent = ts_sent
            return out
        # One line per re-send (no file name: paths may carry patient names): a lost
        # association or a busy PACS must show in the logs even when the retry succeeds.
        log.warning("%s; sending the file again (attempt %d)", reason, attempts + 1)
        sleep(_backoff(config, attempts))


def _reinspect(payload: Payload, planned: PlannedFile) -> DicomHeader:
    if payload.path is not None:
        header = inspect_file(payload.path)
    else:
        assert payload.data is not None
        header = inspect_bytes(payload.data, planned.uri)
    problem = refusal(header)
    if problem is not None:
        raise SourceError(f"{planned.uri}: {problem[1]}")
    if header.sop_instance_uid != planned.sop_instance_uid:
        raise SourceError(f"{planned.uri} changed since it was planned (SOP Instance UID differs)")
    return header


def _backoff(config: JobConfig, attempt: int) -> float:
    """Exponential, with jitter: workers turned away together (a busy PACS rejecting
    associations, a PACS coming back) must not all come back at the same instant."""
    delay = min(30.0, config.retry_backoff * 2 ** (attempt - 1))
    return float(delay * random.uniform(0.5, 1.5))


def _outcome(
    planned: PlannedFile, state: State, reason: str, status: int | None, attempts: int
) -> FileOutcome:
    return FileOutcome(
        planned.uri,
        state,
        reason,
        status,
        sop_class_uid=planned.sop_class_uid,
        sop_instance_uid=planned.sop_instance_uid,
        ts_original=planned.transfer_syntax,
        attempts=attempts,
    )
