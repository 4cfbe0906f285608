"""A scheduled job's time in each window of its schedule, and what it stored in it (the
report's "Schedule" table): from the window changes kept in Redis (schedule_redis.py) and
the job's per-second timeline of stored files."""

from __future__ import annotations

import bisect
import json
from typing import Any, cast

from migrator.keys import limiter_key
from migrator.ledger import Ledger
from migrator.limits.rate_redis import schedule_key
from migrator.limits.schedule_redis import info_key, limits_of
from migrator.settings import Settings


def schedule_windows(ledger: Ledger, start: float, end: float) -> list[dict[str, Any]] | None:
    """Per window (in the schedule's order): seconds of [start, end) spent in it, files
    stored then and their rate, and the spans [from, to) (epoch seconds) it was in force.
    None when the job's destination has no schedule."""
    key = limiter_key(Settings.from_dict(ledger.config()).destination)
    raw = ledger.client.get(info_key(key))
    if raw is None or end <= start:
        return None
    labels: list[str] = json.loads(raw)["windows"]
    changes = cast(
        list[tuple[bytes, float]],
        ledger.client.zrangebyscore(schedule_key(key), "-inf", end, withscores=True),
    )
    rows: dict[int, dict[str, Any]] = {}
    edges: list[float] = []
    owners: list[int] = []
    for n, (member, at) in enumerate(changes):
        until = changes[n + 1][1] if n + 1 < len(changes) else end
        lo, hi = max(at, start), min(until, end)
        if hi <= lo:
            continue
        text = member.decode()
        index = int(text.split("|", 1)[0])
        label = labels[index] if index >= 0 else "(no window: the job's limits)"
        row = rows.setdefault(
            index,
            {"window": label, "limits": limits_of(text), "seconds": 0.0, "files": 0, "spans": []},
        )
        row["seconds"] += hi - lo
        # When (epoch seconds) the job was in the window: the HTML charts shade them.
        row["spans"].append([round(lo, 3), round(hi, 3)])
        edges.append(lo)
        owners.append(index)
    if not owners:
        return None
    for second, (files, _) in ledger.timeline().items():
        # The timeline counts whole seconds: each goes to the window in force at its middle
        # (the first second of the job, begun before the schedule was set, to the first).
        i = max(0, bisect.bisect_right(edges, second + 0.5) - 1)
        rows[owners[i]]["files"] += files
    for row in rows.values():
        row["seconds"] = round(row["seconds"], 1)
        row["files_per_s"] = round(row["files"] / row["seconds"], 2) if row["seconds"] else 0.0
    return [rows[i] for i in sorted(rows)]
