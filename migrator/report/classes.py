"""Files per priority class (the report's "Priority classes" table): the files a priority
list (``--priority-list``, when planned) or `migrator urgent` (while unsent) named, and the
rest; each class's files by state, and when its last file settled.

Only for a job that has such files: the classes come from the ledger's ``priority_files``
hash (file id -> class), small next to the plan (the files named, not the archive).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from migrator.control import URGENT
from migrator.ordering import PRIORITY_LIST

#: Every file no list named
REST = "rest"
#: The classes in the order they are served
ORDER = (URGENT, PRIORITY_LIST, REST)
_STATES = ("stored", "failed", "skipped", "in_flight")


class PriorityClasses:
    """Folds each file's state (and settling time) into its class."""

    def __init__(self, classes: dict[str, str]) -> None:
        self.classes = classes
        self.states: dict[str, Counter[str]] = {}
        #: class -> epoch time its last settled file settled
        self.last: dict[str, float] = {}

    def see(self, file_id: str, state: str, at: object = None) -> None:
        if not self.classes:
            return
        name = self.classes.get(file_id, REST)
        counts = self.states.get(name)
        if counts is None:
            counts = self.states[name] = Counter()
        counts[state] += 1
        if isinstance(at, (int, float)) and at > self.last.get(name, 0.0):
            self.last[name] = float(at)

    def rows(self, started: float) -> list[dict[str, Any]] | None:
        """Per class (urgent, priority-list, rest: those with files): planned, stored,
        failed, skipped, in flight, and ``finished`` (epoch, and seconds after ``started``)
        once none of its files is in flight. None when no list named any file."""
        if not self.classes:
            return None
        rows = []
        for name in ORDER:
            counts = self.states.get(name)
            if not counts:
                continue
            row: dict[str, Any] = {"class": name, "planned": sum(counts.values())}
            row.update({state: counts.get(state, 0) for state in _STATES})
            last = self.last.get(name)
            done = last is not None and not row["in_flight"]
            row["finished"] = round(last, 3) if done and last is not None else None
            row["finished_after_s"] = round(last - started, 1) if done and last else None
            rows.append(row)
        return rows
