"""The distributed migration seen from the control plane: create a job, plan it, wait.

`migrator run` and `migrator plan` are thin front ends over these functions. Enqueuing a
batch is a function the command layer passes in (``workers.app.enqueuer`` sends the task by
name): nothing below the commands imports Celery.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis

from migrator.errors import ConfigError, JobGone, SourceError
from migrator.exitcodes import ExitStatus
from migrator.keys import limiter_key
from migrator.ledger import IN_FLIGHT, Ledger, split_id
from migrator.limits.rate_redis import set_limits
from migrator.limits.schedule import parse as parse_schedule
from migrator.limits.schedule_redis import clear_schedule, set_schedule
from migrator.outcomes import FileOutcome, State
from migrator.planner import (
    MAX_STUDIES_COUNTED,
    PlanSummary,
    plan,
    plan_entries,
    plan_manifest,
)
from migrator.settings import Settings
from migrator.sources import open_source
from migrator.sources.base import Source
from migrator.sources.dicomweb import DicomwebSource
from migrator.sources.dimse import DimseSource
from migrator.sources.manifest import BadLine, ManifestEntry
from migrator.sources.windows import StudyQuery
from migrator.transfer.batch import REJECTED, UNREACHABLE

Enqueue = Callable[[str], None]
#: Sources planned from the UIDs their listing gives, without reading headers
QUERY_SOURCES = (DicomwebSource, DimseSource)


def default_job_id(sources: Sequence[str], config: Settings) -> str:
    """Same sources to the same destination = the same job, so a re-run resumes it."""
    key = json.dumps([sorted(sources), config.destination])
    return "job-" + hashlib.sha1(key.encode()).hexdigest()[:10]


def make_sources(
    args: Sequence[str], config: Settings, query: StudyQuery | None = None
) -> list[Source]:
    """``query``: which studies a DICOMweb source lists (--from/--to/--modality)."""
    return [open_source(arg, config, query=query) for arg in args]


def open_job(
    client: redis.Redis, job_id: str, config: Settings, record: dict[str, Any] | None = None
) -> Ledger:
    """Create the job, or resume it when it exists with the same destination. ``record``:
    more to keep with a new job's settings (its broker, as it may be shown: no password);
    every worker reads the settings and ignores what is not a Settings field."""
    ledger = Ledger(client, job_id)
    if not ledger.create({**config.to_dict(), **(record or {})}):
        check_resumable(ledger, config)
    # The command's rate limits apply from now on, for every worker (they read them from
    # Redis at each reservation).
    set_limits(client, limiter_key(config.destination), config.limits)
    # ...and its schedule, whose relative windows start now (Redis's clock).
    if config.schedule:
        set_schedule(client, limiter_key(config.destination), parse_schedule(config.schedule))
    else:
        clear_schedule(client, limiter_key(config.destination))
    return ledger


def check_resumable(ledger: Ledger, config: Settings) -> None:
    """Raise ConfigError when the existing job ``ledger`` is for another destination than
    ``config`` (also after `migrator retry --host` moved it: said so)."""
    existing = Settings.from_dict(ledger.config())
    if existing.destination == config.destination:
        return
    moved = [h for h in ledger.history() if h.get("kind") == "destination"]
    how = (
        f"; `migrator retry --host/--port/--called-ae` moved it from {moved[-1]['from']}"
        if moved
        else ""
    )
    raise ConfigError(
        f"job {ledger.job_id} already exists for {existing.server}, not {config.server}"
        f"{how}; use another --job, or `migrator retry {ledger.job_id}`"
    )


def plan_job(
    ledger: Ledger | None,
    sources: list[Source],
    enqueue: Enqueue | None,
    *,
    manifests: Sequence[str] = (),
    batch_files: int,
    batch_bytes: int,
    on_bad_line: Callable[[BadLine], None] | None = None,
    order: str = "listing",
    first: frozenset[str] = frozenset(),
) -> PlanSummary:
    """Plan listed sources (in ``order``: migrator/ordering.py), then manifests (in their
    own order); ``ledger=None`` is a dry run.

    Raises JobGone when the job vanishes from Redis while it is planned.
    """
    if ledger is None:
        enqueue = None
    if enqueue is not None and ledger is not None:
        enqueue = _unless_lost(ledger, enqueue)
    # Workers send while this still lists: "nothing in flight" means "the job is done" only
    # once planning ends (runtime.py's idle closer). A dry run has no ledger to mark.
    with ledger.planning_now() if ledger is not None else contextlib.nullcontext():
        # Services that list UIDs (DICOMweb, an old PACS) are planned like a manifest: no
        # header is read (it would take a download per instance).
        listed = [s for s in sources if not isinstance(s, QUERY_SOURCES)]
        total = plan(
            ledger,
            listed,
            enqueue=enqueue,
            batch_files=batch_files,
            batch_bytes=batch_bytes,
            order=order,
            first=first,
        )
        for source in sources:
            if isinstance(source, QUERY_SOURCES):
                part = PlanSummary()
                plan_entries(
                    ledger,
                    _counted(source, part, ledger),
                    enqueue=enqueue,
                    batch_files=batch_files,
                    batch_bytes=batch_bytes,
                    summary=part,
                )
                total.merge(part)
        for path in manifests:
            part = plan_manifest(
                ledger,
                path,
                enqueue=enqueue,
                batch_files=batch_files,
                batch_bytes=batch_bytes,
                on_bad_line=on_bad_line,
            )
            total.merge(part)
        return total


def _counted(
    source: DicomwebSource | DimseSource, summary: PlanSummary, ledger: Ledger | None
) -> Iterator[ManifestEntry]:
    """The source's entries, counted as listed; a source that cannot be listed (refused,
    not a QIDO-RS service) is one planned failure, as for a folder or a bucket."""
    try:
        for entry in source.iter_entries():
            summary.listed += 1
            yield entry
    except SourceError as exc:
        summary.refused += 1
        summary.reasons[str(exc)] += 1
        if ledger is not None:
            ledger.add_refused([(source.uri, State.FAILED, str(exc))])


def _unless_lost(ledger: Ledger, enqueue: Enqueue) -> Enqueue:
    """``enqueue`` that first checks the job is still in Redis. A batch written after the
    job was lost is then left un-enqueued, and the next run of the same command (which
    plans the job anew) enqueues it with the rest, instead of finding its files planned and
    never sent."""

    def checked(batch_id: str) -> None:
        if not ledger.exists():
            raise job_lost(ledger.job_id)
        enqueue(batch_id)

    return checked


def job_lost(job_id: str) -> JobGone:
    """The job vanished from Redis while it ran: a restart without persistence, a flush or
    an eviction took its plan, its outcomes and its queued batches."""
    return JobGone(
        job_id,
        f"job {job_id} is gone from Redis while it ran (restarted without persistence, "
        "flushed or evicted?): its plan, outcomes and queued batches are lost. Run the "
        "same command again: it plans the job anew and sends every file again (a PACS "
        "keeps one copy of an instance sent twice). Run Redis with --appendonly yes to "
        "survive restarts",
    )


def wait(
    ledger: Ledger,
    *,
    on_progress: Callable[[dict[str, int]], None] | None = None,
    timeout: float | None = None,
    alive: Callable[[], bool] | None = None,
    check: Callable[[], None] | None = None,
    poll: float = 0.1,
) -> dict[str, int]:
    """Block until every planned file has an outcome (or the timeout / workers die).

    ``poll``: 2 cheap reads per poll; short, because a small job's end is noticed only at the
    next poll (half a poll of every `migrator run`, on average).

    Raises JobGone when the job disappears from Redis: its counters then read as zero,
    which would otherwise look like a finished job with no files.
    """
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        if check is not None:
            check()  # may raise: what the job needs is gone (the embedded Redis...)
        counts = ledger.counts()
        # Checked after the counts: counts read before a loss are caught at the next poll,
        # counts read after it (all zero) are never taken for a finished job.
        if not ledger.exists():
            raise job_lost(ledger.job_id)
        if on_progress:
            on_progress(counts)
        if counts["in_flight"] <= 0:
            return counts
        if deadline is not None and time.monotonic() > deadline:
            return counts
        if alive is not None and not alive():
            return counts
        time.sleep(poll)


def destination_failure(outcomes: Iterable[FileOutcome]) -> tuple[str, ExitStatus] | None:
    """(reason, exit status) when the PACS could not be used at all: nothing was stored and
    every failed file failed because its batch could not reach the PACS (exit 3, as `store`)
    or had its association rejected (exit 4). None otherwise."""
    failed: list[FileOutcome] = []
    for o in outcomes:
        if o.state is State.STORED:
            return None
        if o.state is State.FAILED:
            failed.append(o)
    if not failed or not all(o.cause in (UNREACHABLE, REJECTED) for o in failed):
        return None
    rejected = next((o for o in failed if o.cause == REJECTED), None)
    if rejected is not None:
        return rejected.reason, ExitStatus.ASSOCIATION_REJECTED
    return failed[0].reason, ExitStatus.CANNOT_CONNECT


def inventory_text(summary: PlanSummary) -> str:
    from pydicom.uid import UID

    from migrator.units import human_bytes

    lines = [
        f"Files listed:      {summary.listed}",
        f"To send:           {summary.planned_new} ({human_bytes(summary.bytes)})",
        f"Already planned:   {summary.already_planned}",
        f"Refused:           {summary.refused}",
        f"Studies:           {len(summary.studies)}"
        + (" or more" if len(summary.studies) >= MAX_STUDIES_COUNTED else ""),
        "SOP classes:",
    ]
    lines += [f"  {n:>8}  {UID(u).name}" for u, n in summary.sop_classes.most_common()]
    lines.append("Transfer syntaxes:")
    lines += [f"  {n:>8}  {UID(u).name}" for u, n in summary.transfer_syntaxes.most_common()]
    if summary.bad_lines:
        lines.append(f"Bad manifest lines: {summary.bad_lines}")
    if summary.reasons:
        lines.append("Refused, by reason:")
        lines += [f"  {n:>8}  {r}" for r, n in summary.reasons.most_common()]
    return "\n".join(lines)


def summary_dict(summary: PlanSummary) -> dict[str, Any]:
    return {
        "listed": summary.listed,
        "planned_new": summary.planned_new,
        "already_planned": summary.already_planned,
        "refused": summary.refused,
        "batches": summary.batches,
    }


def retry_failed(ledger: Ledger, enqueue: Enqueue) -> int:
    """Put the job's failed files back in flight and enqueue their batches again (the
    batches skip what they already stored). Files refused at planning (not DICOM) are not
    retried: sending them cannot succeed. Returns how many files."""
    ids = [fid for fid in ledger.failed_ids() if not fid.startswith("p")]
    retried = ledger.reopen(ids)
    for batch_id in sorted({split_id(fid)[0] for fid in ids}):
        enqueue(batch_id)
    return retried


def requeue_in_flight(ledger: Ledger, enqueue: Enqueue) -> int:
    """Enqueue again every batch that still has files without an outcome (its message was
    lost, e.g. a broker without persistence restarted). Safe: stored files are skipped and
    a batch never runs twice at once. Returns the number of batches."""
    n = 0
    for batch_id, _, states, _ in ledger.iter_batches():
        if IN_FLIGHT in states:
            enqueue(batch_id)
            n += 1
    return n


def recent_rate(ledger: Ledger, window: int = 30) -> tuple[float, float]:
    """(files/s, bytes/s) stored over the last ``window`` seconds of the timeline."""
    timeline = ledger.timeline()
    if not timeline:
        return 0.0, 0.0
    end = max(int(time.time()), max(timeline))
    picked = [v for sec, v in timeline.items() if sec > end - window]
    span = min(window, max(1, end - min(timeline) + 1))
    return sum(f for f, _ in picked) / span, sum(b for _, b in picked) / span
