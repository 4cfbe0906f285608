"""The single-machine sender behind ``migrator store`` and the ``StoreScu`` library API.

Flow: list every source -> inspect headers (refusing what cannot be sent) -> hand the
files to the transfer core (``migrator.transfer.policy``), the same per-file policy that
`run`'s workers use, with an in-process rate limiter, ``concurrency`` associations driven
from one thread, and duplicates settled in memory. Every listed file ends as exactly one
FileOutcome (stored / failed / skipped).

When the destination cannot be used at all (unreachable after the retries, or rejecting
the association for good), the run ends with every unsent file failed for that reason
(exit 3, or 4 for a rejected association).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from migrator.dicomfile import DicomHeader
from migrator.errors import AssociationRejected, DestinationUnavailable, MigratorError, SourceError
from migrator.exitcodes import ExitStatus
from migrator.limits.adaptive import Autotune
from migrator.limits.rate import RateLimiter, make_limiter
from migrator.outcomes import FileOutcome, State, StoreResult
from migrator.settings import Settings
from migrator.sources import expect
from migrator.sources.base import Source, SourceItem
from migrator.sources.filesystem import FileSource, MemorySource
from migrator.sources.inspect import inspect_item, inspect_with_retries, refusal
from migrator.transfer.claims import MemoryClaims
from migrator.transfer.destinations import make_destination
from migrator.transfer.job import Job
from migrator.transfer.policy import Transfer
from migrator.transfer.pool import ConnectionPool
from migrator.transfer.transform import make_transform

if TYPE_CHECKING:
    from migrator.sources.s3 import S3Settings

FileCallback = Callable[[FileOutcome], None]


class StoreScu:
    """Send files, folders, S3 objects and in-memory bytes to one DICOM destination.

    Mirrors node-dicom's ``StoreScu``: add inputs, register callbacks, call ``send()``.
    Callbacks run on the sending thread; keep them short.

    >>> scu = StoreScu(Settings(host="pacs", port=104, called_ae="PACS"))
    >>> scu.add_folder("/archive/2019", recursive=True)          # doctest: +SKIP
    >>> result = scu.send()                                       # doctest: +SKIP
    >>> result.exit_status                                        # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings,
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
        s = self.settings
        if s.tls_settings is not None:
            s.tls_settings.client_context()  # fail now, not at the first association
        result = StoreResult(server=s.server, started=time.time())
        deadline = time.monotonic() + s.timeout if s.timeout else None
        jobs, refused = self._inspect_all()
        if self._on_started:
            self._on_started(len(jobs) + len(refused))
        for outcome in refused:
            self._record(result, outcome)
        pool = ConnectionPool(make_destination(s), capacity=s.max_lanes)
        sending = self._on_sending
        transfer = Transfer(
            s,
            pool,
            self._limiter,
            lambda _job, outcome: self._record(result, outcome),
            claims=MemoryClaims(),
            transform=make_transform(s),
            autotune=Autotune(s.max_lanes) if s.auto_concurrency else None,
            stop=(lambda: time.monotonic() > deadline) if deadline is not None else None,
            on_start=(lambda job: sending(job.uri)) if sending is not None else None,
        )
        with _abort_after(pool, deadline):
            try:
                ended = transfer.run(jobs)
            finally:
                pool.close_all()
        if ended.error is not None:
            reason = str(ended.error)
            result.fatal, result.fatal_exit = reason, _exit_for(ended.error)
        elif deadline is not None and time.monotonic() > deadline:
            reason = f"not sent: overall timeout ({s.timeout:g}s) reached"
        else:
            reason = "not sent: stopped"
        for job in ended.left:
            self._record(result, _failed(job, reason))
        result.finished = time.time()
        if self._on_completed:
            self._on_completed(result)
        return result

    def _inspect_all(self) -> tuple[list[Job], list[FileOutcome]]:
        """Read every header; return what to send and what was refused before sending."""
        refused: list[FileOutcome] = []
        pending: list[tuple[Source, SourceItem]] = []
        for source in self._sources:
            try:
                for item in source.iter_items():
                    pending.append((source, item))
            except SourceError as exc:
                refused.append(FileOutcome(_source_name(source), State.FAILED, str(exc)))
        expect(pending)  # the old PACS fetches them series by series
        jobs: list[Job] = []
        for (source, item), header in zip(pending, _inspect(pending, self.settings), strict=True):
            problem = refusal(header)
            if problem is None:
                assert isinstance(header, DicomHeader)
                jobs.append(Job(item, source, header))
                continue
            outcome = FileOutcome(item.uri, problem[0], problem[1])
            if isinstance(header, DicomHeader):
                outcome.sop_class_uid = header.sop_class_uid
                outcome.sop_instance_uid = header.sop_instance_uid
                outcome.ts_original = header.transfer_syntax
            refused.append(outcome)
        return jobs, refused

    def _record(self, result: StoreResult, outcome: FileOutcome) -> None:
        result.outcomes.append(outcome)
        callback = self._on_sent if outcome.state is State.STORED else self._on_error
        if callback:
            callback(outcome)


def _inspect(
    pending: list[tuple[Source, SourceItem]], settings: Settings
) -> Iterator[DicomHeader | MigratorError]:
    """Headers in order. Remote sources cost a round trip per header: inspected 8 at a
    time (a transient error read again, as a send would be re-tried). Local headers take
    ~40 us each: a thread hand-off per file would double that."""
    if not any(not isinstance(s, FileSource) for s, _ in pending):
        yield from (inspect_item(*p) for p in pending)
        return
    retries, backoff = settings.retries, settings.retry_backoff
    with ThreadPoolExecutor(max_workers=8) as pool:
        yield from pool.map(lambda p: inspect_with_retries(p[0], p[1], retries, backoff), pending)


class _abort_after:
    """Past the deadline (plus a second for answers on their way), abort the connections
    still open: requests in flight then fail at once instead of at the DIMSE timeout."""

    def __init__(self, pool: ConnectionPool, deadline: float | None) -> None:
        self._pool = pool
        self._deadline = deadline
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        if self._deadline is None:
            return
        self._thread = threading.Thread(target=self._watch, name="store-deadline", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assert self._deadline is not None
        if not self._done.wait(max(0.0, self._deadline + 1.0 - time.monotonic())):
            self._pool.abort_all()

    def __exit__(self, *exc: object) -> None:
        self._done.set()


def _exit_for(error: MigratorError) -> ExitStatus:
    rejected = isinstance(error, AssociationRejected) or (
        isinstance(error, DestinationUnavailable) and error.rejected
    )
    return ExitStatus.ASSOCIATION_REJECTED if rejected else ExitStatus.CANNOT_CONNECT


def _failed(job: Job, reason: str) -> FileOutcome:
    h = job.header
    return FileOutcome(
        job.uri,
        State.FAILED,
        reason,
        sop_class_uid=h.sop_class_uid if h else "",
        sop_instance_uid=h.sop_instance_uid if h else "",
        ts_original=h.transfer_syntax if h else "",
        attempts=job.attempts,
    )


def _source_name(source: Source) -> str:
    return str(getattr(source, "path", None) or getattr(source, "uri", None) or source)
