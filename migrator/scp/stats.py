"""Counters of `migrator scp`, shared by the association threads, and their wording.

Invariant: ``stores == stored + store_failures``. A C-STORE counts as a failure when
nothing was written for it, whatever was answered (a fault-injected ``0x0000`` too).
"""

from __future__ import annotations

import threading
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass


@dataclass
class _Counts:
    echoes: int = 0
    stores: int = 0
    stored: int = 0
    store_failures: int = 0
    faults: int = 0
    assoc_accepted: int = 0
    assoc_rejected: int = 0
    contexts_rejected: int = 0


(
    _ECHOES,
    _STORES,
    _STORED,
    _FAILURES,
    _FAULTS,
    _ACCEPTED,
    _REJECTED,
    _CONTEXTS_REJECTED,
) = range(8)


#: The counters, in the order of their cells.
FIELDS = tuple(_Counts.__dataclass_fields__)


class ScpStats:
    """The counters of one receiving process. ``cells`` (one int per ``FIELDS`` entry) may
    be memory another process reads (``migrator.scp.processes``); only this process's
    threads write them, under ``_lock``."""

    def __init__(self, cells: MutableSequence[int] | None = None) -> None:
        self._lock = threading.Lock()
        self._cells: MutableSequence[int] = [0] * len(FIELDS) if cells is None else cells

    @classmethod
    def sum_of(cls, parts: Sequence[ScpStats]) -> ScpStats:
        """Counters that add up ``parts`` (several processes' own), as of now."""
        total = cls()
        for part in parts:
            for i, value in enumerate(vars(part.snapshot()).values()):
                total._cells[i] += value
        return total

    def snapshot(self) -> _Counts:
        with self._lock:
            return _Counts(*self._cells)

    def _add(self, index: int) -> None:
        with self._lock:
            self._cells[index] += 1

    def echo(self) -> None:
        self._add(_ECHOES)

    def store_received(self) -> None:
        self._add(_STORES)

    def store_succeeded(self) -> None:
        self._add(_STORED)

    def store_failed(self, *, fault: bool) -> None:
        with self._lock:
            self._cells[_FAILURES] += 1
            if fault:
                self._cells[_FAULTS] += 1

    def association_accepted(self) -> None:
        self._add(_ACCEPTED)

    def association_rejected(self) -> None:
        self._add(_REJECTED)

    def context_rejected(self) -> None:
        self._add(_CONTEXTS_REJECTED)

    def as_line(self, active: int | None) -> str:
        """The periodic statistics line (key=value, stable names for log scrapers)."""
        c = self.snapshot()
        shown = "unknown" if active is None else active
        return (
            f"echo_count={c.echoes} store_count={c.stores} stored={c.stored} "
            f"store_failures={c.store_failures} active_associations={shown}"
        )

    def summary_lines(self) -> list[str]:
        """The shutdown summary; tests and people read these exact wordings."""
        c = self.snapshot()
        return [
            f"C-ECHO requests: {c.echoes}",
            f"C-STORE requests: {c.stores}",
            f"Successful stores: {c.stored}",
            f"Failed stores: {c.store_failures} (fault injection: {c.faults})",
            f"Associations: {c.assoc_accepted} accepted, {c.assoc_rejected} rejected",
            f"Presentation contexts rejected: {c.contexts_rejected}",
        ]
