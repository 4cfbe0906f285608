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
from typing import TypeVar

from migrator.dicomfile import DicomHeader
from migrator.errors import SourceError
from migrator.ledger import Ledger, PlannedFile
from migrator.ordering import LISTING, PRIORITY_LIST, StudyOrder
from migrator.outcomes import State
from migrator.sources.base import Source, SourceItem
from migrator.sources.filesystem import FileSource
from migrator.sources.inspect import inspect_item, refusal
from migrator.sources.manifest import BadLine, ManifestEntry, read_manifest

Enqueue = Callable[[str], None]
T = TypeVar("T")
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
    bad_lines: int = 0

    def merge(self, other: PlanSummary) -> None:
        for name in ("listed", "planned_new", "already_planned", "refused", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.bytes += other.bytes
        self.bad_lines += other.bad_lines
        self.sop_classes.update(other.sop_classes)
        self.transfer_syntaxes.update(other.transfer_syntaxes)
        self.reasons.update(other.reasons)
        room = MAX_STUDIES_COUNTED - len(self.studies)
        self.studies.update(list(other.studies)[: max(0, room)])


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


class _Emitter:
    """Writes full batches to the ledger and enqueues them (nothing on a dry run)."""

    def __init__(
        self,
        ledger: Ledger | None,
        enqueue: Enqueue | None,
        summary: PlanSummary,
        batch_files: int,
        batch_bytes: int,
    ) -> None:
        self.ledger = ledger if enqueue is not None else None
        self.enqueue = enqueue
        self.summary = summary
        self.batcher = _Batcher(batch_files, batch_bytes)
        #: URIs of the batch being filled that a priority list named
        self.named: set[str] = set()
        # A job planned for the first time has nothing planned to leave out: no "planned
        # before?" round trip per chunk (writing a batch still leaves out a URI planned
        # twice, e.g. by overlapping sources, atomically).
        self.fresh = self.ledger is not None and self.ledger.counts()["planned"] == 0
        if self.ledger is not None and enqueue is not None:
            # A planner that died between writing a batch and enqueuing it.
            for batch_id in self.ledger.unenqueued_batches():
                enqueue(batch_id)
                self.ledger.mark_enqueued(batch_id)

    @property
    def dry(self) -> bool:
        return self.ledger is None

    def add(self, f: PlannedFile, sop_class: str, syntax: str, named: bool = False) -> None:
        summary = self.summary
        if named:
            self.named.add(f.uri)
        if self.dry:
            summary.planned_new += 1
            summary.bytes += f.size
        if sop_class:
            summary.sop_classes[sop_class] += 1
        if syntax:
            summary.transfer_syntaxes[syntax] += 1
        if f.study_uid and len(summary.studies) < MAX_STUDIES_COUNTED:  # bounded memory
            summary.studies.add(f.study_uid)
        full = self.batcher.add(f)
        if full:
            self._emit(full)

    def finish(self) -> None:
        self._emit(self.batcher.flush())

    def _emit(self, files: list[PlannedFile]) -> None:
        if not files or self.ledger is None or self.enqueue is None:
            return
        batch_id = f"b{self.ledger.next_batch_number():07d}"
        written = self.ledger.add_batch(batch_id, files)
        self.summary.planned_new += len(written)
        self.summary.bytes += sum(f.size for f in written)
        self.summary.already_planned += len(files) - len(written)
        if self.named:
            first = [w.file_id for w in written if w.uri in self.named]
            self.ledger.mark_priority(first, PRIORITY_LIST)
            self.named.difference_update(f.uri for f in files)
        if not written:
            return  # all planned before (a manifest repeating lines): no empty batch
        self.enqueue(batch_id)
        self.ledger.mark_enqueued(batch_id)
        self.summary.batches += 1


def plan(
    ledger: Ledger | None,
    sources: Iterable[Source],
    *,
    enqueue: Enqueue | None,
    batch_files: int = 200,
    batch_bytes: int = 256 * 1024 * 1024,
    threads: int | None = None,
    order: str = LISTING,
    first: frozenset[str] = frozenset(),
) -> PlanSummary:
    """Plan every item of ``sources`` into ``ledger``; ``enqueue=None`` is a dry run.
    ``order``: migrator/ordering.py (anything but the listing's holds the batches back
    until the whole listing is read)."""
    summary = PlanSummary()
    out = _Emitter(ledger, enqueue, summary, batch_files, batch_bytes)
    held = StudyOrder(order, first) if order != LISTING or first else None
    try:
        _plan_into(out, summary, sources, threads, held)
        if held is not None:
            for planned, sop_class, syntax, named in held.ranked():
                out.add(planned, sop_class, syntax, named)
    finally:
        if held is not None:
            held.close()
    out.finish()
    return summary


def _plan_into(
    out: _Emitter,
    summary: PlanSummary,
    sources: Iterable[Source],
    threads: int | None,
    held: StudyOrder | None,
) -> None:
    sources = list(sources)
    remote = any(not isinstance(s, FileSource) for s in sources)
    # Remote headers cost a round trip each: read them in parallel. Local ones take ~40 µs:
    # a thread hand-off per file would cost as much again (as measured for `store`).
    parallel = remote or (threads or 1) > 1
    with ThreadPoolExecutor(max_workers=threads or (8 if remote else 1)) as pool:
        for chunk in _chunks(_listing(sources, summary, out.ledger), CHUNK):
            new = _unplanned(out, [item.uri for _, item in chunk])
            fresh = [pair for pair, is_new in zip(chunk, new, strict=True) if is_new]
            summary.already_planned += len(chunk) - len(fresh)
            headers = (
                pool.map(lambda p: inspect_item(*p), fresh)
                if parallel
                else (inspect_item(*p) for p in fresh)
            )
            refused: list[tuple[str, State, str]] = []
            for (_, item), header in zip(fresh, headers, strict=True):
                problem = refusal(header)
                if problem is not None:
                    summary.refused += 1
                    summary.reasons[_reason_key(problem[1])] += 1
                    refused.append((item.uri, problem[0], problem[1]))
                    continue
                assert isinstance(header, DicomHeader)
                planned = PlannedFile(
                    uri=item.uri,
                    size=item.size,
                    version=item.version,
                    sop_class_uid=header.sop_class_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    transfer_syntax=header.transfer_syntax,
                    study_uid=header.study_uid,
                    dataset_offset=header.dataset_offset,
                    accession=header.accession,
                    modality=header.modality,
                )
                if held is not None:
                    sop, syntax = header.sop_class_uid, header.transfer_syntax
                    held.add(planned, header.study_date, sop, syntax, header.patient_id)
                else:
                    out.add(planned, header.sop_class_uid, header.transfer_syntax)
            if out.ledger is not None:
                out.ledger.add_refused(refused)


def plan_manifest(
    ledger: Ledger | None,
    path: str,
    *,
    enqueue: Enqueue | None,
    batch_files: int = 200,
    batch_bytes: int = 256 * 1024 * 1024,
    on_bad_line: Callable[[BadLine], None] | None = None,
) -> PlanSummary:
    """Plan the files a manifest lists, without reading them (workers read each header
    just before sending). Bad lines are counted and passed to ``on_bad_line``."""
    summary = PlanSummary()

    def entries() -> Iterator[ManifestEntry]:
        for row in read_manifest(path):
            if isinstance(row, BadLine):
                summary.bad_lines += 1
                if on_bad_line is not None:
                    on_bad_line(row)
                continue
            summary.listed += 1
            yield row

    return plan_entries(
        ledger,
        entries(),
        enqueue=enqueue,
        batch_files=batch_files,
        batch_bytes=batch_bytes,
        summary=summary,
    )


def plan_entries(
    ledger: Ledger | None,
    entries: Iterable[ManifestEntry],
    *,
    enqueue: Enqueue | None,
    batch_files: int = 200,
    batch_bytes: int = 256 * 1024 * 1024,
    summary: PlanSummary | None = None,
) -> PlanSummary:
    """Plan files known by their URI (and UIDs, when known) without reading them: a
    manifest's lines, a DICOMweb source's instances (``iter_entries``)."""
    summary = summary if summary is not None else PlanSummary()
    out = _Emitter(ledger, enqueue, summary, batch_files, batch_bytes)
    # No "planned before?" round trip per chunk: there is no header to spare reading, and
    # writing a batch leaves out what was planned before (one Redis command per line).
    for entry in entries:
        planned = PlannedFile(
            uri=entry.uri,
            size=entry.size,
            version="",
            sop_class_uid="",
            sop_instance_uid=entry.sop_instance_uid,
            transfer_syntax="",
            study_uid=entry.study_uid,
        )
        out.add(planned, "", "")
    out.finish()
    return summary


def _unplanned(out: _Emitter, uris: list[str]) -> list[bool]:
    # A dry run plans everything it sees. A manifest may repeat a line: only its first
    # occurrence is new, also when the first is still in the batch being filled.
    if out.ledger is None:
        return [True] * len(uris)
    new = [True] * len(uris) if out.fresh else out.ledger.filter_unplanned(uris)
    seen = {f.uri for f in out.batcher.files}
    for n, uri in enumerate(uris):
        if uri in seen:
            new[n] = False
        seen.add(uri)
    return new


def _listing(
    sources: list[Source], summary: PlanSummary, ledger: Ledger | None
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
            if ledger is not None:
                name = str(getattr(source, "uri", None) or getattr(source, "path", source))
                ledger.add_refused([(name, State.FAILED, str(exc))])


def _chunks(items: Iterator[T], n: int) -> Iterator[list[T]]:
    while chunk := list(itertools.islice(items, n)):
        yield chunk


def _reason_key(reason: str) -> str:
    return reason.split(": ", 1)[-1] if reason.startswith(("/", "s3://")) else reason
