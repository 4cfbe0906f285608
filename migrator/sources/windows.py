"""Which studies a query-capable source lists, and how a listing survives a server's result
cap: StudyDate windows split in two until none is at the cap.

Shared by the DICOMweb source (QIDO-RS) and the old PACS as a source (C-FIND): archives cap
how many results one query returns (Orthanc's ``LimitFindResults``; many vendors' C-FIND
SCPs), often without saying so, and a listing at the cap silently misses studies.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from migrator.errors import ConfigError, SourceError

#: One query for the studies of a StudyDate window (None: no date condition): their UIDs,
#: and whether the server said it cut the answer short (C-FIND's 0xFE00 after the matches).
Window = Callable[[tuple[dt.date, dt.date] | None], tuple[list[str], bool]]


@dataclass(frozen=True)
class StudyQuery:
    """Which studies to list: StudyDate from/to (inclusive; None: open), one modality."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modality: str | None = None
    #: Results the server returns per query at most, whatever the paging (None: no cap)
    find_limit: int | None = None

    def __post_init__(self) -> None:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ConfigError(f"--from {self.date_from} is after --to {self.date_to}")
        if self.find_limit is not None and self.find_limit < 2:
            raise ConfigError("--find-limit must be at least 2")


def parse_date(text: str, option: str) -> dt.date:
    """``YYYY-MM-DD`` or ``YYYYMMDD``."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ConfigError(f"{option} {text!r}: expected a date as YYYY-MM-DD")


def dicom_range(dates: tuple[dt.date, dt.date]) -> str:
    """A StudyDate range as DICOM range matching writes it (``YYYYMMDD-YYYYMMDD``)."""
    return f"{dates[0]:%Y%m%d}-{dates[1]:%Y%m%d}"


def studies(query: StudyQuery, window: Window, where: str) -> Iterator[str]:
    """Every study UID the query selects, window by window in date order.

    A window that the server says it cut short, or (with ``find_limit``) that returns that
    many studies, is split in two, down to one day; a day still capped, or a listing
    without dates that is capped, is a SourceError naming it (never a silent loss)."""
    q = query

    def capped(found: list[str], cut: bool) -> bool:
        return cut or (q.find_limit is not None and len(found) >= q.find_limit)

    if q.date_from is None and q.date_to is None:
        found, cut = window(None)
        if capped(found, cut):
            raise SourceError(
                f"{where}: {len(found)} studies and the listing is capped (the server cut "
                "it short, or --find-limit); give --from and --to so it can be split into "
                "date windows"
            )
        yield from found
        return
    pending = [(q.date_from or dt.date(1900, 1, 1), q.date_to or dt.date.today())]
    while pending:
        start, end = pending.pop(0)
        found, cut = window((start, end))
        if not capped(found, cut):
            yield from found
            continue
        if start == end:
            raise SourceError(
                f"{where}: {start.isoformat()} alone has {len(found)} studies and its "
                "listing is capped: raise the server's limit (or --find-limit)"
            )
        # Split in two, the earlier half first: studies come in date order.
        mid = start + (end - start) // 2
        pending[:0] = [(start, mid), (mid + dt.timedelta(days=1), end)]
