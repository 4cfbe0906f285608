"""Plan a job: list sources, read headers, group files into batches, write them to the
ledger and enqueue one task per batch.

Streaming: items flow through in chunks; nothing holds the whole listing. Idempotent: a file
is identified by its URI, and a file already planned is never planned again, so re-running
`plan` (or `run`) for the same job adds only what is new. A planner that crashed between
writing a batch and enqueuing it enqueues it on the next run (`unenqueued_batches`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from migrator.dicomfile import DicomHeader
from migrator.errors import SourceError
from migrator.ledger import Ledger, PlannedFile, file_id
from migrator.outcomes import State
from migrator.sources.base import Source, SourceItem
from migrator.sources.filesystem import FileSource
from migrator.sources.inspect import inspect_item, refusal

Enqueue = Callable[[str], None]
#: Items inspected together (and checked against the ledger in one round trip).
CHUNK = 256
#: The inventory counts distinct studies up to this many (then prints "at least").
MAX_STUDIES_COUNTED = 100_000


@dataclass
class PlanSummary:
    listed: int = 0
    planned_new: int = 0
    already_planned: int = 0
    refused: int = 0
    batches: int = 0
    bytes: int = 0
    sop_classes: Counter[str] = field(default_factory=Counter)
    transfer_syntaxes: Counter[str] = field(default_factory=Counter)
    studies: set[str] = field(default_factory=set)
    reasons: Counter[str] = field(default_factory=Counter)


class _Batcher:
    """Cuts the stream into batches of at most N files / B bytes, at a study boundary
    when the batch is already three quarters full (keeps studies together)."""

    def __init__(self, max_files: int, max_bytes: int) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.files: list[PlannedFile] = []
        self.bytes = 0

    def add(self, f: PlannedFile) -> list[PlannedFile] | None:
        out = None
        if self.files:
            full = len(self.files) >= self.max_files or self.bytes + f.size > self.max_bytes
            near = len(self.files) >= 0.75 * self.max_files or self.bytes >= 0.75 * self.max_bytes
            if full or (near and f.study_uid != self.files[-1].study_uid):
                out = self.flush()
        self.files.append(f)
        self.bytes += f.size
        return out

    def flush(self) -> list[PlannedFile]:
        out, self.files, self.bytes = self.files, [], 0
        return out


def plan(
    ledger: Ledger | None,
    sources: Iterable[Source],
    *,
    enqueue: Enqueue | None,
    batch_files: int = 200,
    batch_bytes: int = 256 * 1024 * 1024,
    threads: int | None = None,
) -> PlanSummary:
    """Plan every item of ``sources`` into ``ledger``; ``enqueue=None`` is a dry run."""
    summary = PlanSummary()
    dry = enqueue is None or ledger is None
    if enqueue is not None and ledger is not None:
        for batch_id in ledger.unenqueued_batches():
            enqueue(batch_id)
            ledger.mark_enqueued(batch_id)
    batcher = _Batcher(batch_files, batch_bytes)

    def emit(files: list[PlannedFile]) -> None:
        if not files or dry:
            return
        assert ledger is not None
        batch_id = f"b{ledger.next_batch_number():07d}"
        ledger.add_batch(batch_id, files)
        assert enqueue is not None
        enqueue(batch_id)
        ledger.mark_enqueued(batch_id)
        summary.batches += 1

    sources = list(sources)
    remote = any(not isinstance(s, FileSource) for s in sources)
    with ThreadPoolExecutor(max_workers=threads or (8 if remote else 1)) as pool:
        for chunk in _chunks(_listing(sources, summary, ledger, dry), CHUNK):
            ids = [file_id(item.uri) for _, item in chunk]
            new = [True] * len(ids) if ledger is None or dry else ledger.filter_unplanned(ids)
            fresh = [
                (pair, fid) for pair, fid, is_new in zip(chunk, ids, new, strict=True) if is_new
            ]
            summary.already_planned += len(chunk) - len(fresh)
            headers = pool.map(lambda p: inspect_item(*p[0]), fresh)
            for ((_, item), fid), header in zip(fresh, headers, strict=True):
                problem = refusal(header)
                if problem is not None:
                    summary.refused += 1
                    summary.reasons[_reason_key(problem[1])] += 1
                    if ledger is not None and not dry:
                        ledger.record_skipped_at_plan(item.uri, problem[1], problem[0])
                    continue
                assert isinstance(header, DicomHeader)
                planned = PlannedFile(
                    file_id=fid,
                    uri=item.uri,
                    size=item.size,
                    version=item.version,
                    sop_class_uid=header.sop_class_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    transfer_syntax=header.transfer_syntax,
                    study_uid=header.study_uid,
                )
                summary.planned_new += 1
                summary.bytes += item.size
                summary.sop_classes[header.sop_class_uid] += 1
                summary.transfer_syntaxes[header.transfer_syntax] += 1
                if len(summary.studies) < MAX_STUDIES_COUNTED:  # bounded memory
                    summary.studies.add(header.study_uid)
                full = batcher.add(planned)
                if full:
                    emit(full)
    emit(batcher.flush())
    return summary


def _listing(
    sources: list[Source], summary: PlanSummary, ledger: Ledger | None, dry: bool
) -> Iterator[tuple[Source, SourceItem]]:
    for source in sources:
        try:
            for item in source.iter_items():
                summary.listed += 1
                yield source, item
        except SourceError as exc:
            # A source that cannot be listed at all is one planned failure, not a crash.
            summary.refused += 1
            summary.reasons[str(exc)] += 1
            if ledger is not None and not dry:
                name = str(getattr(source, "uri", None) or getattr(source, "path", source))
                ledger.record_skipped_at_plan(name, str(exc), State.FAILED)


def _chunks(
    items: Iterator[tuple[Source, SourceItem]], n: int
) -> Iterator[list[tuple[Source, SourceItem]]]:
    while chunk := list(itertools.islice(items, n)):
        yield chunk


def _reason_key(reason: str) -> str:
    return reason.split(": ", 1)[-1] if reason.startswith(("/", "s3://")) else reason
