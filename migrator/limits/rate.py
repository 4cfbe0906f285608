"""Rate limiting for senders: files/s and bytes/s, shared by every association of a run.

Algorithm: GCRA, the Generic Cell Rate Algorithm (ITU-T I.371 / ATM Forum TM 4.0, "virtual
scheduling" form), one bucket per limit. Each bucket keeps a single number, its *theoretical
arrival time* (TAT): the time at which the bucket would be full again if nothing else were
sent. With emission interval ``T = 1/rate`` and burst ``B`` (in units: files or bytes):

* a request of cost ``n`` arriving at ``now`` may go at
  ``allow = max(TAT, now) + n*T - max(n, B)*T`` (``n <= B``: the usual ``TAT - (B-n)*T``;
  ``n > B``: ``max(TAT, now)``, i.e. as soon as the bucket is full — see *debt* below);
* the request is **reserved**, not rejected: its send time ``s = max(now, allow over all
  buckets)`` is returned as a wait, and every bucket is charged *at s*:
  ``TAT = max(TAT, s) + n*T``.

Why reserve instead of "try again later": callers queue in arrival order (FIFO — a later
reservation never goes before an earlier one), nobody polls, and there is no thundering herd
when the bucket refills. Why charge every bucket at ``s`` rather than at ``now``: a file held
back by the byte bucket must not also be counted by the file bucket at a time it was not
sent; otherwise files that waited on bytes would be released together and break the files/s
bound. With this rule each bucket sees a conforming GCRA arrival sequence at the real send
times, which gives, for every window of ``W`` seconds::

    units sent in the window <= rate * W + max(burst, largest single request)

**Debt.** A request larger than the burst (a 1 GB file under a 10 MB/s limit with a 10 MB
burst) could never fit; it is admitted once the bucket is full (idle) and its whole cost is
charged, so the TAT lands ~100 s in the future and later files wait that debt off. Without
this the file would starve forever.

The Redis backend (one Lua script, time from ``TIME``) implements exactly
:func:`gcra_reserve` over two keys; that pure function is the reference model both backends
are tested against (TESTING.md §4.4).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from migrator.errors import ConfigError

__all__ = [
    "BucketParams",
    "Limits",
    "LocalLimiter",
    "NullLimiter",
    "RateLimiter",
    "gcra_reserve",
    "make_limiter",
]


@dataclass(frozen=True)
class Limits:
    """What the user asked for. ``None`` rate = that dimension is unlimited.

    ``burst_files``: how many files may go back to back after an idle period.
    ``burst_bytes``: idem for bytes; default one second of ``bytes_per_s`` (at least 1).
    """

    files_per_s: float | None = None
    bytes_per_s: float | None = None
    burst_files: int = 10
    burst_bytes: int | None = None

    def __post_init__(self) -> None:
        _check_rate("files_per_s", "files per second", self.files_per_s)
        _check_rate("bytes_per_s", "bytes per second", self.bytes_per_s)
        _check_burst("burst_files", self.burst_files)
        if self.burst_bytes is not None:
            _check_burst("burst_bytes", self.burst_bytes)

    @property
    def unlimited(self) -> bool:
        return self.files_per_s is None and self.bytes_per_s is None

    @property
    def effective_burst_bytes(self) -> int | None:
        """``burst_bytes``, or one second of ``bytes_per_s``; None when bytes are unlimited."""
        if self.bytes_per_s is None:
            return None
        if self.burst_bytes is not None:
            return self.burst_bytes
        return max(1, math.ceil(self.bytes_per_s))

    def buckets(self) -> tuple[BucketParams | None, BucketParams | None]:
        """(files bucket, bytes bucket); None for an unlimited dimension."""
        files = (
            BucketParams(1.0 / self.files_per_s, self.burst_files)
            if self.files_per_s is not None
            else None
        )
        burst_bytes = self.effective_burst_bytes
        nbytes = (
            BucketParams(1.0 / self.bytes_per_s, burst_bytes)
            if self.bytes_per_s is not None and burst_bytes is not None
            else None
        )
        return files, nbytes


def _check_rate(field: str, what: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field} must be a number of {what}, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{field} must be a positive number of {what} (omit it for no limit), got {value!r}"
        )


def _check_burst(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field} must be a whole number, got {value!r}")
    if value < 1:
        raise ConfigError(f"{field} must be at least 1, got {value!r}")


@dataclass(frozen=True)
class BucketParams:
    """One GCRA bucket: ``interval`` = seconds per unit (1/rate), ``burst`` in units."""

    interval: float
    burst: int


def gcra_reserve(
    tats: Sequence[float],
    buckets: Sequence[BucketParams | None],
    costs: Sequence[int],
    now: float,
) -> tuple[list[float], float]:
    """Reserve one request across several GCRA buckets; the pure reference step.

    ``tats[i]`` is bucket *i*'s theoretical arrival time (``-inf`` or anything <= ``now``
    means "full"), ``costs[i]`` the request's cost in that bucket's unit. Returns the new TATs
    and the wait in seconds (``send time - now``, >= 0). Unlimited buckets (None) are skipped
    and keep their TAT. This is the exact arithmetic the Redis Lua script performs.
    """
    send_at = now
    for tat, params, cost in zip(tats, buckets, costs, strict=True):
        if params is None:
            continue
        # max(cost, burst): a request larger than the burst needs the bucket full, no more
        allow = max(tat, now) + (cost - max(cost, params.burst)) * params.interval
        send_at = max(send_at, allow)
    new_tats = [
        tat if params is None else max(tat, send_at) + cost * params.interval
        for tat, params, cost in zip(tats, buckets, costs, strict=True)
    ]
    return new_tats, send_at - now


@runtime_checkable
class RateLimiter(Protocol):
    """What senders use. Implementations: :class:`LocalLimiter`, :class:`NullLimiter`, and a
    Redis backend with the same semantics."""

    def reserve(self, files: int = 1, nbytes: int = 0) -> float:
        """Atomically check and charge both buckets, reserving a FIFO slot.

        Returns the seconds the caller must wait before sending (0.0 = go now). The slot is
        charged whether or not the caller then sends.
        """
        ...

    def acquire(self, files: int = 1, nbytes: int = 0) -> float:
        """:meth:`reserve`, then sleep the wait; returns the seconds waited."""
        ...


class NullLimiter:
    """No limits: admits everything at once, no lock, no clock."""

    def reserve(self, files: int = 1, nbytes: int = 0) -> float:
        return 0.0

    def acquire(self, files: int = 1, nbytes: int = 0) -> float:
        return 0.0

    def __repr__(self) -> str:
        return "NullLimiter()"


class LocalLimiter:
    """In-process GCRA limiter for ``migrator store``: thread-safe, shared by N associations.

    ``clock`` must be monotonic (never wall-clock time: a clock step would grant or steal a
    burst). ``clock`` and ``sleep`` are injectable so tests run on a fake clock.
    """

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._limits = limits
        self._buckets = limits.buckets()
        # -inf = full: the first burst goes at once whatever the clock's origin is
        self._tats: list[float] = [-math.inf, -math.inf]

    @property
    def limits(self) -> Limits:
        return self._limits

    def set_limits(self, limits: Limits) -> None:
        """Change the limits while running. The TATs (and so any debt) are kept: the new
        rates apply to requests from now on, as with the Redis backend where limits are
        script arguments."""
        with self._lock:
            self._limits = limits
            self._buckets = limits.buckets()

    def reserve(self, files: int = 1, nbytes: int = 0) -> float:
        if files < 0 or nbytes < 0:
            raise ValueError(f"files and nbytes must be >= 0, got {files}, {nbytes}")
        with self._lock:
            now = self._clock()
            self._tats, wait = gcra_reserve(self._tats, self._buckets, (files, nbytes), now)
        return wait

    def acquire(self, files: int = 1, nbytes: int = 0) -> float:
        # Sleep outside the lock: the slot is already ours, others may reserve behind us.
        wait = self.reserve(files, nbytes)
        if wait > 0:
            self._sleep(wait)
        return wait

    def __repr__(self) -> str:
        return f"LocalLimiter({self._limits!r})"


def make_limiter(
    limits: Limits,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RateLimiter:
    """:class:`NullLimiter` when nothing is limited, else a :class:`LocalLimiter`."""
    if limits.unlimited:
        return NullLimiter()
    return LocalLimiter(limits, clock=clock, sleep=sleep)
