"""Adaptive concurrency (``-j auto``): how many associations a sender keeps busy.

One association sends at most one file per round trip: 1 / RTT files per second, whatever
the file size (a PACS 10 ms away: ~100 files/s). More associations hide the round trip,
until something is the limit (the PACS, the link, or this machine's CPU); past that they
only queue, or the PACS answers 0xA7xx (out of resources) or turns associations away as
busy. Throughput itself is a poor guide on a shared machine (batches start and end, other
senders come and go), so the controller steers by *queueing*, as TCP Vegas does: with
``n`` associations busy and answers taking ``L`` against ``base`` (the best seen), about
``n × (1 − base / L)`` requests wait somewhere instead of moving. Per sending process and
destination, measured over windows of a few answers per association:

* **slow start**: from ``START``, double every window (short ones: an answer per
  association, about a round trip) while fewer than ``ALPHA`` of the associations queue;
  one window above that holds it, a second in a row ends it. Then grow by a quarter (at
  least one) while fewer than ``ALPHA`` queue, hold while fewer than ``BETA`` queue, and
  shrink (× ``BACK_OFF``) above it;
* **congestion** (0xA7xx, a busy rejection): × ``BACK_OFF`` at once, and the number of
  associations the PACS said "too many" to is not reached again for ``REMEMBER_S``
  seconds (a PACS with room for N would otherwise be probed, and refuse, now and then);
* always within ``[1, ceiling]``: ``--max-associations`` when given (a fleet-wide cap,
  enforced separately by slot leases), else ``MAX_AUTO``.

Fleet-wide, a congestion one sender meets is everyone's: it bumps an *epoch* in Redis
(``migrator.keys.concurrency_key``), and every sender of the destination that reads a new
epoch (at most once a second) backs off too, so a fleet does not keep overshooting a PACS
that only some of its senders have heard from. Each sender also leaves its number there
(for ``LEVEL_MS``): one that starts later (`run`'s workers, after `run`'s own sender) starts
from half of it instead of ramping up from ``START`` again. ``LocalSignal`` stands in for
Redis in `store`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # `store` runs without Redis: importing it costs ~90 ms of start-up
    import redis

#: Associations a sender starts with.
START = 2
#: Associations at most without --max-associations.
MAX_AUTO = 64
#: Queued requests, as a share of the associations (at least one), below which to grow...
ALPHA = 0.10
#: ... and above which to shrink (at least three).
BETA = 0.30
#: Back-off factor on congestion.
BACK_OFF = 0.7
#: A measuring window lasts at least this long and this many answers per association.
WINDOW_S = 0.05
WINDOW_FILES = 2
#: A window after a change starts this many answer latencies later: new associations
#: first connect and negotiate, and their first answers say little.
SETTLE = 2.0
#: The same during slow start: doubling once a round trip or so, as TCP's slow start does,
#: rather than once every ~5 (a PACS 20 ms away is reached at 64 associations in ~0.3 s,
#: not ~0.6 s). A wrong step costs one window, and the back-off follows at once.
SS_WINDOW_S = 0.02
SS_WINDOW_FILES = 1
SS_SETTLE = 1.0
#: The best latency seen is forgotten slowly (it may rise by its own value in this many
#: seconds), so that a route or a PACS that became slower for good becomes the new normal.
BASE_FORGET_S = 60.0
#: Seconds a "too many" from the PACS bounds growth (then room may have opened).
REMEMBER_S = 30.0
#: How long a sender's level stays a hint for the senders that start after it.
LEVEL_MS = 60_000
#: Seconds between two looks at the fleet's congestion epoch.
SHARED_READ = 1.0

#: One line per change of the number of associations (INFO: shown with -v).
log = logging.getLogger("migrator.concurrency")


class Signal(Protocol):
    """Where the senders of one destination tell each other of congestion."""

    def epoch(self) -> int: ...
    def congested(self) -> int:
        """Report a congestion; returns the new epoch."""
        ...

    def level(self) -> int:
        """The associations a sender of the destination settled on lately (0: none)."""
        ...

    def settled(self, target: int) -> None:
        """Tell the senders that start later where this one is."""
        ...


class LocalSignal:
    def __init__(self) -> None:
        self._epoch = 0
        self._level = 0

    def level(self) -> int:
        return self._level

    def settled(self, target: int) -> None:
        self._level = target

    def epoch(self) -> int:
        return self._epoch

    def congested(self) -> int:
        self._epoch += 1
        return self._epoch


class RedisSignal:
    """The fleet's congestion epoch for one destination (an INCR'd counter)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._client = client
        self._key = key

    def epoch(self) -> int:
        raw = self._client.get(self._key)
        return int(raw) if raw else 0

    def level(self) -> int:
        raw = self._client.get(self._key + ":level")
        return int(raw) if raw else 0

    def settled(self, target: int) -> None:
        self._client.set(self._key + ":level", target, px=LEVEL_MS)

    def congested(self) -> int:
        pipe = self._client.pipeline(transaction=False)
        pipe.incr(self._key)
        pipe.pexpire(self._key, 24 * 3_600_000)
        return int(pipe.execute()[0])


class Autotune:
    """One sender's associations to one destination (kept across its batches)."""

    def __init__(
        self,
        ceiling: int,
        signal: Signal | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self._signal = signal or LocalSignal()
        self._clock = clock
        # A sender that starts while others send (run's workers after its own sender, a
        # worker that joins) starts from half of where they are, not from scratch.
        self.target = min(max(START, self._signal.level() // 2), self.ceiling)
        self._slow_start = True
        self._ss_held = False  # slow start held once for a window of mild queueing
        self._base = float("inf")  # the best window latency seen (slowly forgotten)
        self._window_start = clock()
        self._window: list[float] = []
        self._seen_epoch: int | None = None  # the fleet's epoch when first read
        self._epoch_read_at = float("-inf")
        self._calm_until = float("-inf")  # one back-off per window, not one per answer
        self._too_many: int | None = None  # what the PACS last refused, and until when
        self._too_many_until = float("-inf")
        self._recover_to = 0  # the level a fleet-wide cap took this sender down from
        #: (time, target, why) of every change, for logs and tests
        self.history: list[tuple[float, int, str]] = [(self._window_start, self.target, "start")]

    # -- what the sender reports ----------------------------------------------------------

    def answered(self, seconds: float) -> None:
        """A file was answered (stored, or failed for its own reason) in ``seconds``."""
        now = self._clock()
        self._follow_fleet(now)  # the fleet's news first: a back-off restarts the window
        if now < self._window_start:
            return  # settling after a change
        self._window.append(seconds)
        span, files = (
            (SS_WINDOW_S, SS_WINDOW_FILES) if self._slow_start else (WINDOW_S, WINDOW_FILES)
        )
        if now - self._window_start >= span and len(self._window) >= files * self.target:
            self._close_window(now)

    def congestion(self, why: str) -> None:
        """0xA7xx, or an association turned away as busy: back off, and tell the fleet
        (once per window: the answers already on their way say the same thing)."""
        now = self._clock()
        if now < self._calm_until:
            return
        self._seen_epoch = self._signal.congested()
        self._too_many, self._too_many_until = self.target, now + REMEMBER_S
        self._back_off(why)

    def capped(self, lanes: int) -> None:
        """The fleet-wide cap gave this sender no more than ``lanes`` (no free slot)."""
        if lanes < self.target:
            # Not a sign of queueing: once the other senders free slots, this one doubles
            # back to where it was (not +1 a window from wherever the cap left it).
            self._recover_to = max(self._recover_to, self.target)
            self._set(max(1, lanes), "fleet-wide cap")

    # -- inside ---------------------------------------------------------------------------

    def _close_window(self, now: float) -> None:
        latency = statistics.median(self._window)  # one slow file is not a queue
        drift = 1 + (now - self._window_start) / BASE_FORGET_S
        self._window = []
        self._window_start = now
        self._base = min(self._base * drift, latency)
        queued = self.target * (1 - self._base / latency) if latency > 0 else 0.0
        if queued > max(3.0, BETA * self.target):
            self._back_off(
                f"answers slowed down ({latency * 1000:.1f} ms, best {self._base * 1000:.1f} ms)"
            )
        elif queued < max(1.0, ALPHA * self.target):
            if self._slow_start:
                grown = 2 * self.target
            elif self.target < self._recover_to:
                grown = min(2 * self.target, self._recover_to)
            else:
                grown = self.target + max(1, self.target // 4)
            self._ss_held = False
            self._grow(grown)
        elif self._slow_start:
            # Mild queueing. Once may be a passing CPU spike on this machine (run's workers
            # booting beside its own sender): hold and look again. Twice in a row, queueing
            # began: from now on, small steps.
            self._slow_start = not self._ss_held
            self._ss_held = True

    def _grow(self, to: int) -> None:
        to = min(self.ceiling, to)
        if self._too_many is not None and self._clock() < self._too_many_until:
            to = min(to, self._too_many - 1)
        if to > self.target:
            self._set(to, "answers as fast as with fewer")

    def _back_off(self, why: str) -> None:
        self._slow_start = False
        self._recover_to = 0  # queueing or congestion: the old level is too many now
        self._calm_until = self._clock() + max(WINDOW_S, 2 * self._base if self._base < 1 else 0)
        self._set(max(1, int(self.target * BACK_OFF)), why)

    def _follow_fleet(self, now: float) -> None:
        if now - self._epoch_read_at < SHARED_READ:
            return
        self._epoch_read_at = now
        epoch = self._signal.epoch()
        if self._seen_epoch is None:  # what happened before this sender started is old news
            self._seen_epoch = epoch
        elif epoch > self._seen_epoch:
            self._seen_epoch = epoch
            if now >= self._calm_until:
                self._back_off("another sender met congestion")

    def _set(self, target: int, why: str) -> None:
        log.info("associations %d -> %d: %s", self.target, target, why)
        self.target = target
        self._signal.settled(target)
        self.history.append((self._clock(), target, why))
        # A window measures one number of associations: start a new one once they are up.
        settle = (
            (SS_SETTLE if self._slow_start else SETTLE) * self._base if self._base < 1.0 else 0.0
        )
        self._window_start = self._clock() + settle
        self._window = []
