"""Counters of `migrator scp`, shared by the association threads, and their wording.

Invariant: ``stores == stored + store_failures``. A C-STORE counts as a failure when
nothing was written for it, whatever was answered (a fault-injected ``0x0000`` too).
"""

from __future__ import annotations

import threading
from collections.abc import Sized
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


class ScpStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c = _Counts()

    def snapshot(self) -> _Counts:
        with self._lock:
            return _Counts(**vars(self._c))

    def echo(self) -> None:
        with self._lock:
            self._c.echoes += 1

    def store_received(self) -> None:
        with self._lock:
            self._c.stores += 1

    def store_succeeded(self) -> None:
        with self._lock:
            self._c.stored += 1

    def store_failed(self, *, fault: bool) -> None:
        with self._lock:
            self._c.store_failures += 1
            if fault:
                self._c.faults += 1

    def association_accepted(self) -> None:
        with self._lock:
            self._c.assoc_accepted += 1

    def association_rejected(self) -> None:
        with self._lock:
            self._c.assoc_rejected += 1

    def context_rejected(self) -> None:
        with self._lock:
            self._c.contexts_rejected += 1

    def as_line(self, active: Sized) -> str:
        """The periodic statistics line (key=value, stable names for log scrapers)."""
        c = self.snapshot()
        return (
            f"echo_count={c.echoes} store_count={c.stores} stored={c.stored} "
            f"store_failures={c.store_failures} active_associations={len(active)}"
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
