"""Header inspection of any source item, and the pre-flight checks before sending.

Shared by `migrator store` and the planner: local files are read in place; remote items
(S3) are inspected from a ranged GET of their first bytes, widened to the whole object
only when the header is longer.
"""

from __future__ import annotations

import time

from migrator.backoff import backoff as backoff_delay
from migrator.dicomfile import (
    DAMAGED_INPUT_ERRORS,
    HEAD_BYTES,
    DicomHeader,
    NotDicomError,
    inspect_bytes,
    inspect_file,
)
from migrator.errors import MigratorError, SourceError
from migrator.outcomes import State
from migrator.sources.base import Source, SourceItem
from migrator.sources.filesystem import FileSource

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def inspect_item(source: Source, item: SourceItem) -> DicomHeader | MigratorError:
    """The item's header, or the error that explains why it cannot be sent."""
    try:
        if isinstance(source, FileSource):
            return inspect_file(item.uri)
        read_head = getattr(source, "read_head", None)
        if read_head is not None:
            head = read_head(item, 4 * HEAD_BYTES)
            try:
                return inspect_bytes(head, item.uri, size=item.size)
            except NotDicomError:
                if len(head) >= item.size:
                    raise
        with source.fetch(item) as payload:
            if payload.path is not None:
                return inspect_file(payload.path)
            assert payload.data is not None
            return inspect_bytes(payload.data, item.uri)
    except MigratorError as exc:
        return exc
    except DAMAGED_INPUT_ERRORS as exc:  # unforeseen damage fails one file, not the job
        return SourceError(f"cannot inspect: {type(exc).__name__}: {exc}")


def inspect_with_retries(
    source: Source, item: SourceItem, retries: int, backoff: float
) -> DicomHeader | MigratorError:
    """``inspect_item``, read again after a transient error (a download cut short, a busy
    source: S3 or WADO-RS) as a send is re-tried: up to ``retries`` more times, with the
    same exponential, jittered backoff; the error when it persists, saying so (a source
    error then: the file fails with it, it is not left unsettled)."""
    read = inspect_item(source, item)
    for attempt in range(retries):
        if not (isinstance(read, MigratorError) and read.retryable):
            return read
        time.sleep(backoff_delay(backoff, attempt + 1))
        read = inspect_item(source, item)
    if isinstance(read, MigratorError) and read.retryable and retries:
        return SourceError(f"{read} (gave up after {retries + 1} attempts)")
    return read


def refusal(result: DicomHeader | MigratorError) -> tuple[State, str] | None:
    """None when the item may be sent; otherwise its final state and the reason.

    Skipped: what is not DICOM (``NotDicomError``: text, empty files, pipes, links to
    folders) and DICOMDIRs. Failed: everything else that stops a file, because someone has
    to look at it: damaged DICOM (truncated, no SOP Class/Instance UID, no Study/Series
    UID), files that cannot be read (permissions, broken links).
    """
    if not isinstance(result, DicomHeader):
        state = State.SKIPPED if isinstance(result, NotDicomError) else State.FAILED
        return state, str(result)
    if result.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
        return State.SKIPPED, "DICOMDIR (media storage directory), not an image instance"
    missing = [n for n, v in (("Study", result.study_uid), ("Series", result.series_uid)) if not v]
    if missing:
        names = " and ".join(f"{m} Instance UID" for m in missing)
        # PS3.3: both are Type 1 in every IOD; a PACS would reject or mis-file the instance.
        return State.FAILED, f"invalid instance: no {names} (Type 1); not sent"
    return None
