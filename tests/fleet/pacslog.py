"""What the fleet's PACS (``tests/fleet/pacs.py``) saw, read from its event file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PacsLog:
    """What the receiver saw, read from its event file."""

    stores: Counter[str] = field(default_factory=Counter)
    #: (time, peer ip) of each stored instance, in order
    stored_at: list[tuple[float, str]] = field(default_factory=list)
    #: associations open when each C-STORE was answered
    open_at_store: list[int] = field(default_factory=list)
    #: the most connections open at once, counted at every open
    max_open: int = 0
    #: connections opened per peer ip
    opened_by: Counter[str] = field(default_factory=Counter)
    #: SOP Instance UIDs stored, per peer ip
    uids_from: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, events: Path) -> PacsLog:
        log = cls()
        open_now = 0
        text = events.read_text() if events.exists() else ""
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue  # a line cut by a SIGKILL mid-write
            kind, when, peer = parts[0], float(parts[1]), parts[2]
            if kind == "O":
                open_now += 1
                log.max_open = max(log.max_open, open_now)
                log.opened_by[peer] += 1
            elif kind == "C":
                open_now -= 1
            elif kind == "S" and len(parts) == 5:
                log.stores[parts[4]] += 1
                log.stored_at.append((when, peer))
                log.uids_from.setdefault(peer, set()).add(parts[4])
                log.open_at_store.append(int(parts[3]))
        return log

    @property
    def distinct(self) -> int:
        return len(self.stores)

    @property
    def total(self) -> int:
        return sum(self.stores.values())

    def twice(self) -> dict[str, int]:
        return {uid: n for uid, n in self.stores.items() if n > 1}

    def by_peer(self) -> Counter[str]:
        return Counter(peer for _, peer in self.stored_at)

    def most_in_window(self, seconds: float) -> int:
        """The most instances stored within any window of ``seconds`` (sliding)."""
        times = sorted(t for t, _ in self.stored_at)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] > seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best
