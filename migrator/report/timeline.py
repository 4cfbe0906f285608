"""A job's timeline in a report: files and bytes stored, files settled and files failed,
over time.

Built from the ledger's per-second counts in buckets of whole seconds, at most
``MAX_TIMELINE_POINTS`` of them: a longer job gets wider buckets.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

#: At most this many points in a timeline chart or series; longer jobs use wider buckets.
MAX_TIMELINE_POINTS = 600


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One bucket of the timeline: ``offset`` seconds after ``Timeline.start``."""

    offset: int
    width: int
    files: int
    bytes: int
    #: Files that got any outcome (stored, failed, skipped) in this bucket
    settled: int
    #: Running totals at the end of the bucket
    cum_files: int
    cum_settled: int
    #: Files that failed in this bucket, and the running total: failures over time
    failed: int = 0
    cum_failed: int = 0

    @property
    def files_per_s(self) -> float:
        return self.files / self.width

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.width


@dataclass(slots=True)
class Timeline:
    start: int = 0
    bucket_s: int = 1
    points: list[TimelinePoint] = field(default_factory=list)
    peak_files_per_s: int = 0
    peak_bytes_per_s: int = 0
    #: Seconds from the first to the last second in which a file was stored
    sending_s: int = 0


def build_timeline(
    per_second: dict[int, tuple[int, int]],
    settled_at: Counter[int] | None = None,
    failed_at: Counter[int] | None = None,
) -> Timeline:
    """Buckets of at most ``MAX_TIMELINE_POINTS``: stored files/bytes and settled files.

    ``per_second`` is the ledger's timeline (epoch second -> files, bytes stored);
    ``settled_at`` counts every outcome (also failures and skips) by the second it was
    recorded in, for the cumulative progress; ``failed_at`` the failures alone (a subset:
    they are among the settled files), for failures over time.
    """
    settled_at = settled_at or Counter()
    failed_at = failed_at or Counter()
    seconds = set(per_second) | set(settled_at)
    if not seconds:
        return Timeline()
    first, last = min(seconds), max(seconds)
    span = last - first + 1
    bucket = max(1, math.ceil(span / MAX_TIMELINE_POINTS))
    n = math.ceil(span / bucket)
    files = [0] * n
    nbytes = [0] * n
    settled = [0] * n
    failed = [0] * n
    for sec, (f, b) in per_second.items():
        i = (sec - first) // bucket
        files[i] += f
        nbytes[i] += b
    for sec, c in settled_at.items():
        settled[(sec - first) // bucket] += c
    for sec, c in failed_at.items():
        if first <= sec <= last:  # (always: failures are settled files)
            failed[(sec - first) // bucket] += c
    points = []
    cum_files = cum_settled = cum_failed = 0
    for i in range(n):
        cum_files += files[i]
        cum_settled += settled[i]
        cum_failed += failed[i]
        # The last bucket may cover fewer seconds than the others: rates use its real width.
        width = min(bucket, span - i * bucket)
        points.append(
            TimelinePoint(
                i * bucket,
                width,
                files[i],
                nbytes[i],
                settled[i],
                cum_files,
                cum_settled,
                failed[i],
                cum_failed,
            )
        )
    stored_secs = [s for s, (f, _) in per_second.items() if f]
    return Timeline(
        start=first,
        bucket_s=bucket,
        points=points,
        peak_files_per_s=max((f for f, _ in per_second.values()), default=0),
        peak_bytes_per_s=max((b for _, b in per_second.values()), default=0),
        sending_s=(max(stored_secs) - min(stored_secs) + 1) if stored_secs else 0,
    )
