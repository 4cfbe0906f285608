"""Re-inspection: the header a file is sent with, checked against the file as it is now.

Between planning and sending a file may change (hours apart, in a job of millions). A
file planned with its header is sent with that header while it is unchanged: the same size
and modification time (a ``stat``, ~2 us, instead of reading the header again, ~40 us); a
spool file or bytes (S3) were checked by their source when fetched (size and ETag). A file
that changed is read again, refused when it is no longer sendable, and failed when it is no
longer the instance that was planned.
"""

from __future__ import annotations

import os

from migrator.dicomfile import DicomHeader, inspect_bytes, inspect_file
from migrator.errors import SourceError
from migrator.sources.base import Payload
from migrator.sources.filesystem import FileSource
from migrator.sources.inspect import refusal
from migrator.transfer.job import Job


def reinspect(job: Job, payload: Payload) -> DicomHeader:
    """The header to send ``job`` with (updating ``job.header`` when it was read again).
    Raises SourceError for a file that cannot be sent as it is now."""
    planned = job.header
    known = planned is not None and planned.dataset_offset >= 0
    if known and (not job.planned or _unchanged(job, payload)):
        assert planned is not None
        return planned
    if payload.path is not None:
        header = inspect_file(payload.path)
    else:
        assert payload.data is not None
        header = inspect_bytes(payload.data, job.uri)
    problem = refusal(header)
    if problem is not None:
        raise SourceError(f"{job.uri}: {problem[1]}")
    if planned is not None and header.sop_instance_uid != planned.sop_instance_uid:
        raise SourceError(f"{job.uri} changed since it was planned (SOP Instance UID differs)")
    job.header = header
    return header


def _unchanged(job: Job, payload: Payload) -> bool:
    if payload.path is None or payload.path != job.uri or not isinstance(job.source, FileSource):
        return True
    if not job.item.version:
        return False
    try:
        info = os.stat(payload.path)
    except OSError:
        return False  # read again: that says what is wrong
    return info.st_size == job.item.size and str(info.st_mtime_ns) == job.item.version
