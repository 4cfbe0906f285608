"""The order in which a job's files are planned, hence sent (``--order``).

``listing``: as the sources list them (streamed: batches are enqueued while listing goes
on). ``newest-study-first`` / ``oldest-first``: by Study Date, a study's files together,
files without a date last. A priority list (``--priority-list``: StudyInstanceUIDs,
AccessionNumbers or PatientIDs, one a line) puts the files it names before all others,
each part in the order asked. Workers take batches in the order they were enqueued, so the
planner holds the listing back until it has seen all of it: the planned files wait in a
temporary SQLite file (sorted on disk: a listing of millions does not need the memory),
then come out study by study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator

from migrator.errors import ConfigError
from migrator.ledger import PlannedFile

LISTING = "listing"
NEWEST = "newest-study-first"
OLDEST = "oldest-first"
ORDERS = (NEWEST, OLDEST, LISTING)
#: The priority class of the files a priority list named (the report's per-class table).
PRIORITY_LIST = "priority-list"


def read_priority_list(path: str) -> frozenset[str]:
    """The identifiers a priority list names (one a line; blank lines and # comments
    ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--priority-list {path}: {exc}") from None
    named = frozenset(line for line in lines if line)
    if not named:
        raise ConfigError(f"--priority-list {path}: names nothing (one identifier a line)")
    return named


def check(order: str) -> str:
    if order not in ORDERS:
        raise ConfigError(f"--order {order!r}: use one of {', '.join(ORDERS)}")
    return order


class StudyOrder:
    """Planned files in, the same files out in the order asked."""

    def __init__(self, order: str, first: frozenset[str] = frozenset()) -> None:
        self.order = check(order)
        self.first = first
        fd, self._path = tempfile.mkstemp(prefix="migrator-order-", suffix=".sqlite")
        os.close(fd)
        self._db = sqlite3.connect(self._path)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE f "
            "(rank INT, dated INT, date TEXT, study TEXT, seq INT, row TEXT, sop TEXT, ts TEXT)"
        )
        self._seq = 0

    def add(
        self, f: PlannedFile, study_date: str, sop_class: str, syntax: str, patient_id: str = ""
    ) -> None:
        date = study_date.strip()[:8] if self.order != LISTING else ""
        named = {f.study_uid, f.accession, patient_id} & self.first
        self._seq += 1
        self._db.execute(
            "INSERT INTO f VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                0 if named else 1,
                1 if date else 0,
                date,
                f.study_uid,
                self._seq,
                json.dumps(dataclasses.asdict(f)),
                sop_class,
                syntax,
            ),
        )

    def __iter__(self) -> Iterator[tuple[PlannedFile, str, str]]:
        for f, sop, ts, _ in self.ranked():
            yield f, sop, ts

    def ranked(self) -> Iterator[tuple[PlannedFile, str, str, bool]]:
        """(file, SOP class, transfer syntax, named by the priority list), in order."""
        direction = "DESC" if self.order == NEWEST else "ASC"
        # A study's files together (its date is the same on each of them), in listing order.
        cursor = self._db.execute(
            "SELECT row, sop, ts, rank FROM f "
            f"ORDER BY rank, dated DESC, date {direction}, study, seq"
        )
        for row, sop, ts, rank in cursor:
            yield PlannedFile(**json.loads(row)), sop, ts, rank == 0

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)
