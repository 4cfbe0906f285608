"""A scheduled job's time in each window of its schedule, and what it stored in it (the
report's "Schedule" table): from the window changes kept in Redis (schedule_redis.py) and
the time each stored file's outcome was recorded."""

from __future__ import annotations

import bisect
import json
from typing import Any, cast

from migrator.keys import limiter_key
from migrator.ledger import Ledger
from migrator.limits.rate_redis import schedule_key
from migrator.limits.schedule_redis import info_key, limits_of
from migrator.settings import Settings


class ScheduleWindows:
    """Per window (in the schedule's order): seconds of [start, end) spent in it, files
    stored then (each file by the time its outcome was recorded, told with ``see``) and
    their rate, and the spans [from, to) (epoch seconds) it was in force. ``rows()`` is
    None when the job's destination has no schedule.

    Per file, not per second of the timeline: a second split by a window change would go
    whole to one window (a paused window showed files stored just before it)."""

    def __init__(self, ledger: Ledger, start: float, end: float) -> None:
        self._rows: dict[int, dict[str, Any]] = {}
        self._edges: list[float] = []
        self._owners: list[int] = []
        key = limiter_key(Settings.from_dict(ledger.config()).destination)
        raw = ledger.client.get(info_key(key))
        if raw is None or end <= start:
            return
        labels: list[str] = json.loads(raw)["windows"]
        changes = cast(
            list[tuple[bytes, float]],
            ledger.client.zrangebyscore(schedule_key(key), "-inf", end, withscores=True),
        )
        for n, (member, at) in enumerate(changes):
            until = changes[n + 1][1] if n + 1 < len(changes) else end
            lo, hi = max(at, start), min(until, end)
            if hi <= lo:
                continue
            text = member.decode()
            index = int(text.split("|", 1)[0])
            label = labels[index] if index >= 0 else "(no window: the job's limits)"
            row = self._rows.setdefault(
                index,
                {
                    "window": label,
                    "limits": limits_of(text),
                    "seconds": 0.0,
                    "files": 0,
                    "spans": [],
                },
            )
            row["seconds"] += hi - lo
            # When (epoch seconds) the job was in the window: the HTML charts shade them.
            row["spans"].append([round(lo, 3), round(hi, 3)])
            self._edges.append(lo)
            self._owners.append(index)

    def see(self, at: float) -> None:
        """A file stored at ``at`` (a file stored before the schedule was set, in the
        job's first moments, goes to the first window)."""
        if self._owners:
            i = max(0, bisect.bisect_right(self._edges, at) - 1)
            self._rows[self._owners[i]]["files"] += 1

    def rows(self) -> list[dict[str, Any]] | None:
        if not self._owners:
            return None
        for row in self._rows.values():
            row["seconds"] = round(row["seconds"], 1)
            row["files_per_s"] = round(row["files"] / row["seconds"], 2) if row["seconds"] else 0.0
        return [self._rows[i] for i in sorted(self._rows)]
