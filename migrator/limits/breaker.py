"""A circuit breaker per destination, shared by every sender of a fleet.

A PACS whose disk is full answers 0xA700 to every file; one that accepts TCP and never
answers times every request out. Without a breaker each file then goes through all its
retries (minutes per batch) and the job looks stuck. With it:

* the senders count the *consecutive* transient failures they see (0xA7xx, a lost or silent
  association, an association request left unanswered or turned away as busy), together
  in Redis: after ``THRESHOLD`` in a row, fleet-wide, the breaker for the destination
  *opens*, with the reason and the time; a file stored anywhere starts the count again;
* a sender that finds the breaker open sends nothing to that destination: its files stay
  in flight (a batch comes back later), none is failed for the PACS's state;
* one sender at a time *probes* when a probe is due (a lock in Redis): its next file is the
  probe. Stored: the breaker closes and everyone resumes. Failed again: the next probe waits
  twice as long (``FIRST_PROBE`` s, doubling up to ``MAX_PROBE`` s);
* with ``--give-up-after``, a job whose destination stayed unhealthy longer than that ends:
  its unsent files fail with the reason (``Breaker.open_for``).

A failure costs one INCR; a success costs nothing in Redis unless the count it last read was
above zero or the breaker open (it then clears them). Reading the state costs one round trip
per second per sender (cached). ``LocalBreaker`` is the same for one process without Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:  # annotations only: `store` without Redis does not pay for importing it
    import redis

#: Consecutive transient failures, in one sender, that open the breaker.
THRESHOLD = 10
#: Seconds to the first probe, doubled after each failed probe up to MAX_PROBE.
FIRST_PROBE = 2.0
MAX_PROBE = 30.0
#: Seconds a sender keeps what it read of the breaker before reading it again.
CACHE = 1.0


@dataclass(frozen=True, slots=True)
class Open:
    """The breaker is open: since when (epoch s), why, and when the next probe is due."""

    since: float
    reason: str
    probe_at: float
    interval: float


class Breaker(Protocol):
    def failed(self, reason: str) -> None:
        """A transient failure (counted; the THRESHOLD-th in a row opens the breaker)."""
        ...

    def succeeded(self) -> None:
        """A file stored: the count starts again; closes the breaker if it was open."""
        ...

    def state(self) -> Open | None:
        """None while closed."""
        ...

    def try_probe(self) -> bool:
        """True when a probe is due and this sender won the right to send it."""
        ...

    def probe_failed(self, reason: str) -> None:
        """The probe failed: the next one waits longer."""
        ...


class LocalBreaker:
    """One process's breaker (`store`)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._count = 0
        self._open: Open | None = None

    def failed(self, reason: str) -> None:
        self._count += 1
        if self._open is None and self._count >= THRESHOLD:
            now = self._clock()
            self._open = Open(now, reason, now + FIRST_PROBE, FIRST_PROBE)

    def succeeded(self) -> None:
        self._count = 0
        self._open = None

    def state(self) -> Open | None:
        return self._open

    def try_probe(self) -> bool:
        return self._open is not None and self._clock() >= self._open.probe_at

    def probe_failed(self, reason: str) -> None:
        if self._open is not None:
            interval = min(MAX_PROBE, self._open.interval * 2)
            now = self._clock()
            self._open = Open(self._open.since, reason, now + interval, interval)


# Open the breaker unless it is open already. KEYS: state hash. ARGV: now, reason, first
# probe interval.
_OPEN = """
if redis.call('HEXISTS', KEYS[1], 'since') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'since', ARGV[1], 'reason', ARGV[2],
           'probe_at', tostring(tonumber(ARGV[1]) + tonumber(ARGV[3])), 'interval', ARGV[3])
return 1
"""

# A failed probe: double the interval. KEYS: state hash, probe lock. ARGV: now, reason, max.
_PROBE_FAILED = """
if redis.call('HEXISTS', KEYS[1], 'since') == 0 then return 0 end
local interval = math.min(tonumber(ARGV[3]), 2 * tonumber(redis.call('HGET', KEYS[1], 'interval')))
redis.call('HSET', KEYS[1], 'reason', ARGV[2], 'interval', tostring(interval),
           'probe_at', tostring(tonumber(ARGV[1]) + interval))
redis.call('DEL', KEYS[2])
return 1
"""


class RedisBreaker:
    """The fleet's breaker for one destination (``migrator.keys.breaker_key``)."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._key = key
        self._lock = f"{key}:probe"
        self._clock = clock
        self._monotonic = monotonic
        self._fails = f"{key}:fails"
        self._count = 0  # the fleet's count as last read (or incremented) here
        self._cached: Open | None = None
        self._read_at = float("-inf")
        self._seen_open = False
        self._open_script = client.register_script(_OPEN)
        self._probe_failed = client.register_script(_PROBE_FAILED)

    def failed(self, reason: str) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.incr(self._fails)
        pipe.pexpire(self._fails, 3_600_000)  # a count nobody touched for an hour is stale
        self._count = int(pipe.execute()[0])
        if self._count >= THRESHOLD and self.state() is None:
            self._open_script(keys=[self._key], args=[self._clock(), reason[:500], FIRST_PROBE])
            self._read_at = float("-inf")  # read it back at once

    def succeeded(self) -> None:
        if self._count or self._seen_open:
            self._client.delete(self._key, self._lock, self._fails)
            self._count = 0
            self._seen_open = False
            self._cached = None
            self._read_at = self._monotonic()

    def state(self) -> Open | None:
        now = self._monotonic()
        if now - self._read_at >= CACHE:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(self._key)
            pipe.get(self._fails)
            raw, fails = pipe.execute()
            self._cached = _parse(raw)
            self._count = int(fails or 0)
            self._read_at = now
            if self._cached is not None:
                self._seen_open = True
        return self._cached

    def try_probe(self) -> bool:
        state = self.state()
        if state is None or self._clock() < state.probe_at:
            return False
        # The lock outlives a probe that hangs (a silent PACS) only by its expiry.
        ttl_ms = int(max(state.interval, FIRST_PROBE) * 1000) + 60_000
        won = bool(self._client.set(self._lock, "1", nx=True, px=ttl_ms))
        if won:
            self._seen_open = True
        return won

    def probe_failed(self, reason: str) -> None:
        self._probe_failed(
            keys=[self._key, self._lock], args=[self._clock(), reason[:500], MAX_PROBE]
        )
        self._read_at = float("-inf")


def read_state(client: redis.Redis, key: str) -> Open | None:
    """The breaker of a destination as stored (for `run`'s progress and `status`)."""
    return _parse(cast(dict[bytes, bytes], client.hgetall(key)))


def _parse(raw: dict[bytes, bytes] | None) -> Open | None:
    if not raw or b"since" not in raw:
        return None
    get: Any = raw.get
    return Open(
        since=float(get(b"since")),
        reason=get(b"reason", b"").decode("utf-8", "replace"),
        probe_at=float(get(b"probe_at", b"0")),
        interval=float(get(b"interval", str(FIRST_PROBE).encode())),
    )
