"""Files that carry the same SOP Instance UID: sent once, never overwritten (issue 7).

A SOP Instance UID names one instance for ever (PS3.5 §9: "a UID shall uniquely identify
an object"), so a PACS given a second file with the same UID either keeps the first
(Orthanc without ``OverwriteInstances``) or replaces it: one of two files is silently lost
either way. Both `migrator store` and the engine therefore send only the first file seen
with a UID (the *owner*) and settle every later one here, before it is sent:

* identical bytes: **skipped** (``duplicate: …``), the owner carries the instance;
* different bytes: **failed** (``conflict: …``), not sent, so the copy at the PACS is not
  overwritten; someone has to decide which file is right.

The comparison streams both files in chunks through the sources' ``fetch`` (a local path,
or bytes / a spool file for S3), so a 2 GB file costs two 1 MiB buffers. Sizes are compared
first: files of different sizes are never read. This module holds the comparison and the
reason texts; who is first is decided by the caller (an in-memory map in `store`, the
ledger's UID index in the engine: ``Ledger.claim_uids``).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

from migrator.dicomfile import DicomHeader
from migrator.errors import MigratorError, SourceError
from migrator.outcomes import State
from migrator.sources.base import Payload, Source, SourceItem
from migrator.sources.inspect import inspect_item

#: Bytes read from each file per comparison step.
CHUNK = 1024 * 1024

DUPLICATE = "duplicate"
CONFLICT = "conflict"

#: How the report groups these reasons (one group each, whatever the files and UIDs).
DUPLICATE_GROUP = (
    "duplicate: same SOP Instance UID and identical content as another file; not sent again"
)
CONFLICT_GROUP = (
    "conflict: SOP Instance UID also in another file with different content; not sent, "
    "so the copy at the PACS is not overwritten"
)


def duplicate_reason(other_uri: str) -> str:
    return (
        f"{DUPLICATE}: same SOP Instance UID and identical content as {other_uri}; not sent again"
    )


#: The same file given twice (``store`` with a file and its folder): sent once.
LISTED_TWICE = f"{DUPLICATE}: the same file is listed twice; not sent again"


def conflict_reason(uid: str, other_uri: str) -> str:
    return (
        f"{CONFLICT}: SOP Instance UID {uid} is also in {other_uri} with different content; "
        "not sent, so the copy at the PACS is not overwritten"
    )


#: ``--on-conflict``: what becomes of a later copy whose content differs (README, issue 18)
ON_CONFLICT = ("fail", "first-good", "skip")


def conflict_skipped_reason(uid: str, other_uri: str, policy: str, *, stored: bool) -> str:
    """A differing later copy settled as skipped by ``--on-conflict first-good`` / ``skip``."""
    if stored:
        return (
            f"{CONFLICT}: SOP Instance UID {uid} was stored from {other_uri}, whose content "
            f"differs; skipped (--on-conflict {policy})"
        )
    return (
        f"{CONFLICT}: SOP Instance UID {uid} is also in {other_uri}, which was not stored and "
        f"differs; skipped, no other copy is sent (--on-conflict {policy})"
    )


def unreadable_owner_reason(uid: str, other_uri: str, error: str) -> str:
    """The first file with the UID cannot be read any more: the contents cannot be told
    equal, so this one is held back like a conflict."""
    return (
        f"{CONFLICT}: SOP Instance UID {uid} is also in {other_uri}, which cannot be read to "
        f"compare ({error}); not sent, so the copy at the PACS is not overwritten"
    )


def group_reason(reason: str) -> str | None:
    """The report's group for a duplicate or conflict reason (None for other reasons)."""
    if reason.startswith(f"{CONFLICT}: SOP Instance UID "):
        return CONFLICT_GROUP
    if reason.startswith(f"{DUPLICATE}: same SOP Instance UID "):
        return DUPLICATE_GROUP
    return None


@dataclass(frozen=True, slots=True)
class Copy:
    """One file with a given SOP Instance UID: where to read it, and its UID when known
    (``""``: a file planned from a manifest whose header was read by another worker)."""

    source: Source
    item: SourceItem
    sop_instance_uid: str = ""


class OwnerUnreadable(MigratorError):
    """The first file with the UID could not be read for the comparison."""


def settle(candidate: Copy, owner: Copy, on_conflict: str = "fail") -> tuple[State, str] | None:
    """The outcome of ``candidate``, a later file with the UID ``owner`` has; None when the
    candidate is to be sent after all: the owner's UID turned out to be another one (the
    engine's index matched a hash, not the UID).

    Raises ``MigratorError`` when the candidate itself cannot be read (it fails for that
    reason, as sending it would have).
    """
    uid = candidate.sop_instance_uid
    if owner.sop_instance_uid and owner.sop_instance_uid != uid:
        return None
    if candidate.item.uri == owner.item.uri:
        return State.SKIPPED, LISTED_TWICE
    try:
        same = same_content(candidate, owner)
    except OwnerUnreadable as exc:
        return State.FAILED, unreadable_owner_reason(uid, owner.item.uri, str(exc))
    if same:
        return State.SKIPPED, duplicate_reason(owner.item.uri)
    if not owner.sop_instance_uid:
        header = inspect_item(owner.source, owner.item)
        if not isinstance(header, DicomHeader):
            return State.FAILED, unreadable_owner_reason(uid, owner.item.uri, str(header))
        if header.sop_instance_uid != uid:
            return None
    if on_conflict != "fail":
        # The stored copy is the instance; this other version is not sent and not an error.
        return State.SKIPPED, conflict_skipped_reason(uid, owner.item.uri, on_conflict, stored=True)
    return State.FAILED, conflict_reason(uid, owner.item.uri)


def same_content(a: Copy, b: Copy) -> bool:
    """Whether the two files hold the same bytes, read in chunks (flat memory).

    Errors reading ``a`` propagate as they are; errors reading ``b`` are ``OwnerUnreadable``.
    """
    if a.item.size and b.item.size and a.item.size != b.item.size:
        return False
    with _opened(a, owner=False) as (size_a, fa), _opened(b, owner=True) as (size_b, fb):
        if size_a != size_b:
            return False
        buf_a, buf_b = bytearray(CHUNK), bytearray(CHUNK)
        view_a, view_b = memoryview(buf_a), memoryview(buf_b)
        while True:
            n = _fill(fa, view_a, a, owner=False)
            m = _fill(fb, view_b, b, owner=True)
            if n != m:
                return False
            if n == CHUNK:
                if buf_a != buf_b:  # bytearray equality is a memcmp (memoryviews' is not)
                    return False
                continue
            return view_a[:n].tobytes() == view_b[:n].tobytes()  # the last, partial chunk


#: An open file (unbuffered) or bytes in memory: both read into a caller's buffer.
_Stream = io.FileIO | io.BytesIO


@contextlib.contextmanager
def _opened(copy: Copy, *, owner: bool) -> Iterator[tuple[int, _Stream]]:
    """The open file. Only errors fetching or opening *this* copy become OwnerUnreadable
    (``owner``): an error from the body (reading the other copy) passes through as it is."""
    with contextlib.ExitStack() as stack:
        try:
            payload = stack.enter_context(copy.source.fetch(copy.item))
            size, stream = _open_payload(payload, copy.item.uri)
            stack.enter_context(stream)
        except OwnerUnreadable:
            raise
        except MigratorError as exc:
            if owner:
                raise OwnerUnreadable(str(exc)) from exc
            raise
        yield size, stream


def _open_payload(payload: Payload, uri: str) -> tuple[int, _Stream]:
    if payload.path is None:
        assert payload.data is not None
        return len(payload.data), io.BytesIO(payload.data)
    try:
        f = io.FileIO(payload.path, "rb")
    except OSError as exc:
        raise SourceError(f"{uri}: cannot open: {exc.strerror or exc}") from exc
    return os.fstat(f.fileno()).st_size, f


def _fill(stream: _Stream, view: memoryview, copy: Copy, *, owner: bool) -> int:
    """Read until ``view`` is full or the file ends; the number of bytes read."""
    got = 0
    try:
        while got < len(view):
            n = stream.readinto(view[got:])
            if not n:
                break
            got += n
    except OSError as exc:
        error = f"{copy.item.uri}: cannot read: {exc.strerror or exc}"
        raise (OwnerUnreadable(error) if owner else SourceError(error)) from exc
    return got
