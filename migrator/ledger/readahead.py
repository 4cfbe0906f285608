"""Outcomes of settled batches, read while the job still runs (`migrator run`'s wait).

At its end a run reads every outcome of its job, for the summary and the report: 20,000
files cost ~0.25 s there, most of the run's stop. Most batches settle long before the last
one, and a settled batch's record changes only if a file of it is opened again (`retry`, a
stored file reopened after a lost delivery). So `run` reads and parses each batch once it
has settled, while it waits anyway (``ReadAhead.step``), and the final read
(``Ledger.iter_files``) takes from here every batch whose states and outcome log are still
those read: the states compared whole, the log by its length (a new line lengthens it, its
compaction shortens it), both read in the same MULTI as the other batches' records. A
batch whose states match but whose log differs is read again whole. (A file reopened,
stored again and compacted into a log of exactly the old length would keep the details of
its first outcome — time, worker, latency — never its state: the states are compared.)

Bounded: at most ``MAX_FILES`` files are kept ahead (their outcomes stay in memory until
the end); past that, the rest is read at the end as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from migrator.ledger.encoding import (
    IN_FLIGHT,
    STATE,
    PlannedFile,
    latest_lines,
    outcome_from_line,
    unpack,
)
from migrator.outcomes import FileOutcome

if TYPE_CHECKING:
    from migrator.ledger.core import Ledger

#: (planned file, its outcome or None while in flight, extra fields: at, planned, worker)
Row = tuple[PlannedFile, FileOutcome | None, dict[str, Any]]

#: Files at most kept ahead.
MAX_FILES = 250_000
#: Batches looked at per step: a step runs between two polls of the wait (~10 ms at most).
STEP = 8


@dataclass(frozen=True, slots=True)
class Ahead:
    """One settled batch as read: its states, its outcome log's length, its rows."""

    states: str
    log_len: int
    rows: list[Row]


def file_rows(plan: list[PlannedFile], states: str, raw: bytes) -> Iterator[Row]:
    """A batch's files with their outcomes, from its plan, states and outcome log."""
    latest = latest_lines(raw)
    for index, planned in enumerate(plan):
        flag = states[index : index + 1]
        if flag == IN_FLIGHT:
            yield planned, None, {}
            continue
        state = STATE.get(flag)
        line = latest.get(index)
        if state is None or line is None:
            continue
        worker, data, _ = line
        extra = {"at": data["t"], "planned": planned}
        if worker:
            data["w"] = worker
            extra["worker"] = worker
        yield planned, outcome_from_line(data, state, planned), extra


class ReadAhead:
    """The settled batches of one job read so far (``batches``), grown by ``step``."""

    def __init__(self, ledger: Ledger, max_files: int = MAX_FILES) -> None:
        self._ledger = ledger
        self._max_files = max_files
        self._files = 0
        self._todo: list[str] | None = None  # batch ids not read ahead yet, in plan order
        self.batches: dict[str, Ahead] = {}

    def step(self, batches: int = STEP) -> int:
        """Look at up to ``batches`` batches not read yet, in plan order, and keep those
        that have settled; returns how many were kept."""
        if self._todo is None:
            self._todo = self._ledger.batch_ids()
        if not self._todo or self._files >= self._max_files:
            return 0
        k = self._ledger.keys
        client = self._ledger.client
        part = self._todo[:batches]
        pipe = client.pipeline(transaction=False)
        for batch_id in part:
            pipe.get(k.states(batch_id))
        looked = pipe.execute()
        settled = [b for b, s in zip(part, looked, strict=True) if s and IN_FLIGHT not in _s(s)]
        # A batch still in flight goes to the back: the next step looks at others first.
        waiting = [b for b in part if b not in settled]
        self._todo = self._todo[len(part) :] + waiting
        if not settled:
            return 0
        pipe = client.pipeline(transaction=True)
        for batch_id in settled:
            pipe.get(k.batch(batch_id))
            pipe.get(k.states(batch_id))
            pipe.get(k.outcomes(batch_id))
        got = pipe.execute()
        kept = 0
        for n, batch_id in enumerate(settled):
            blob, states, raw = got[3 * n : 3 * n + 3]
            text = _s(states or b"")
            if blob is None or IN_FLIGHT in text:
                self._todo.append(batch_id)  # reopened meanwhile: looked at again later
                continue
            log = cast(bytes, raw or b"")
            rows = list(file_rows(unpack(batch_id, cast(bytes, blob)), text, log))
            self.batches[batch_id] = Ahead(text, len(log), rows)
            self._files += len(rows)
            kept += 1
        return kept


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
