"""The order in which a job's files are planned, hence sent (``--order``).

``listing``: as the sources list them (streamed: batches are enqueued while listing goes
on). ``newest-study-first`` / ``oldest-first``: by Study Date, a study's files together,
files without a date last. Workers take batches in the order they were enqueued, so the
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


def check(order: str) -> str:
    if order not in ORDERS:
        raise ConfigError(f"--order {order!r}: use one of {', '.join(ORDERS)}")
    return order


class StudyOrder:
    """Planned files in, the same files out in the order asked."""

    def __init__(self, order: str) -> None:
        self.order = check(order)
        fd, self._path = tempfile.mkstemp(prefix="migrator-order-", suffix=".sqlite")
        os.close(fd)
        self._db = sqlite3.connect(self._path)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE f "
            "(dated INT, date TEXT, study TEXT, seq INT, row TEXT, sop TEXT, ts TEXT)"
        )
        self._seq = 0

    def add(self, f: PlannedFile, study_date: str, sop_class: str, syntax: str) -> None:
        date = study_date.strip()[:8]
        self._seq += 1
        self._db.execute(
            "INSERT INTO f VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
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
        direction = "DESC" if self.order == NEWEST else "ASC"
        # A study's files together (its date is the same on each of them), in listing order.
        cursor = self._db.execute(
            f"SELECT row, sop, ts FROM f ORDER BY dated DESC, date {direction}, study, seq"
        )
        for row, sop, ts in cursor:
            yield PlannedFile(**json.loads(row)), sop, ts

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)
