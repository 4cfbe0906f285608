"""Reserving several files' worth from the rate limiter in one call.

With the fleet-wide limiter one reservation is a Redis script of ~6 commands; taking the
next few files with it brings that under one command per file. A lease never exceeds the
burst (files, and bytes when bytes are limited), so the limiter's bound on any window,
rate x seconds + burst, still holds; the files of a lease just go back to back. A re-send
(second attempt) is charged on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from migrator.limits.rate import Limits, RateLimiter

if TYPE_CHECKING:
    from migrator.transfer.job import Job

#: Files reserved in one call (at most the burst).
LEASE_FILES = 10


class Leases:
    def __init__(self, limiter: RateLimiter, limits: Limits) -> None:
        self.limiter = limiter
        self.max_files = max(1, min(LEASE_FILES, limits.burst_files))
        self.max_bytes = limits.effective_burst_bytes
        self._prepaid: set[int] = set()

    def take(self, job: Job, upcoming: Iterable[Job]) -> float:
        """Wait until ``job`` may go (its first attempt may have been paid for with an
        earlier one); returns the seconds waited. ``upcoming``: the files next in line."""
        first = job.attempts <= 1
        if first and id(job) in self._prepaid:
            self._prepaid.discard(id(job))
            return 0.0
        group = [job]
        nbytes = job.item.size
        if first:
            for nxt in upcoming:
                if len(group) >= self.max_files:
                    break
                if nxt.attempts or id(nxt) in self._prepaid:
                    continue
                if self.max_bytes is not None and nbytes + nxt.item.size > self.max_bytes:
                    break
                group.append(nxt)
                nbytes += nxt.item.size
        waited = self.limiter.acquire(len(group), nbytes)
        self._prepaid.update(id(j) for j in group[1:])
        return waited
