"""A fleet-wide cap on concurrent associations per destination: a Redis counting semaphore
with expiring leases.

PACS limit simultaneous associations as much as bandwidth (a busy one answers
A-ASSOCIATE-RJ "transient" or simply stops answering), and the number of workers is not the
number the PACS accepts. Every association a worker opens holds one *slot*: a member of the
ZSET ``key`` (:func:`migrator.keys.slots_key`) whose score is the lease's expiry in
milliseconds of Redis ``TIME`` (one clock for every host, as for the rate limiter).

Why leases rather than a counter: a worker killed with SIGKILL (OOM, node loss) never
releases; its slot comes back by itself ``lease_seconds`` after its last :meth:`refresh`.
The holder must therefore refresh more often than ``lease_seconds`` while the association
is open. Expired members are dropped by every script before it counts, so the count never
includes a dead worker's lease for longer than that.

Not FIFO: waiters poll, so a holder that releases and re-acquires at once usually wins
against them. The cap is what the PACS needs; a waiter that loses for ``timeout`` seconds gets
:class:`SlotTimeout`, a transient error retried like a busy PACS. (A queue of waiters with
heartbeats would make it fair; not needed while slots are held for an association's life.)

Each operation is one round trip (``EVALSHA``; ``ZREM`` for release). The ZSET expires a
second after its latest lease, so an idle destination leaves no key behind.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from typing import Any, Final

import redis

from migrator.errors import SlotTimeout
from migrator.limits.rate_redis import retry_redis

__all__ = ["AssociationSlots", "SlotTimeout"]

log = logging.getLogger(__name__)

#: Polling interval bounds while waiting for a slot (jittered so that waiting workers do not
#: ask in lockstep). Short enough that a freed slot is taken within ~0.1 s, long enough that
#: a hundred waiting workers cost 1000–2000 cheap round trips/s.
POLL_MIN_S: Final = 0.05
POLL_MAX_S: Final = 0.1

#: How long a sender that waits for a slot marks the slots as wanted.
WANTED_MS: Final = 2000

#: Releasing is best effort once Redis has been unreachable this long: the lease expires
#: anyway, and a worker shutting down must not hang on it.
RELEASE_OUTAGE_S: Final = 5.0

_RETRYABLE: Final = (redis.ConnectionError, redis.TimeoutError)

# Shared prologue: Redis time in integer milliseconds, expired leases dropped (score <= now).
_NOW_AND_PRUNE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
"""

# Keep the key one second beyond its latest lease (ZSET scores are sorted: the last member).
_EXPIRE_AFTER_LAST: Final = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2]) + 1000))
"""

# KEYS[1] zset; ARGV[1] token, ARGV[2] limit, ARGV[3] lease ms. 1 = slot taken, 0 = full.
# The limit is an argument, not stored: each caller states the cap it was configured with.
_ACQUIRE_LUA: Final = (
    _NOW_AND_PRUNE
    + """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
"""
    + _EXPIRE_AFTER_LAST
    + "return 1\n"
)

# KEYS[1] zset; ARGV[1] token, ARGV[2] lease ms. 1 = extended, 0 = lost (expired/released).
_REFRESH_LUA: Final = (
    _NOW_AND_PRUNE
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
"""
    + _EXPIRE_AFTER_LAST
    + "return 1\n"
)

# KEYS[1] zset. Read-only: leases not yet expired.
_HELD_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], string.format('(%d', now), '+inf')
"""


class AssociationSlots:
    """At most ``limit`` leases on ``key`` at once, across every process using it.

    ``limit`` is sent with every acquisition, so two callers may disagree (e.g. after a
    config change): each admits only while fewer than *its* limit are held.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        limit: int,
        lease_seconds: float = 30.0,
        wanted_key: str | None = None,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        self._client = client
        self._key = key
        #: Set for WANTED_MS while a sender waits for a slot (see :meth:`wanted`)
        self._wanted_key = wanted_key
        self._limit = limit
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._refresh = client.register_script(_REFRESH_LUA)
        self._held = client.register_script(_HELD_LUA)
        # Tokens name their holder so that `redis-cli zrange` shows who holds the slots.
        self._prefix = f"{socket.gethostname()}:{os.getpid()}:"

    @property
    def key(self) -> str:
        return self._key

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def lease_seconds(self) -> float:
        return self._lease_ms / 1000

    def try_acquire(self) -> str | None:
        """One attempt: a new token if a slot was free, else None."""
        token = self._prefix + uuid.uuid4().hex[:16]
        args = [token, str(self._limit), str(self._lease_ms)]
        taken = self._acquire(keys=[self._key], args=args)
        return token if int(taken) else None

    def wanted(self) -> bool:
        """Has a sender waited for a slot in the last WANTED_MS (one with none: one that
        merely wanted more, ``-j auto`` growing, does not count)? Then the holders of idle
        associations give theirs back between batches; otherwise they keep them for their
        next batch: reopening 32 associations per batch costs round trips on a long link."""
        return self._wanted_key is not None and bool(self._client.exists(self._wanted_key))

    def acquire(self, timeout: float) -> str:
        """Wait up to ``timeout`` seconds for a slot; returns the lease's token.

        Polls (one cheap script call every 50–100 ms, jittered) rather than blocking on a
        list: a lease that simply expires wakes nobody, polling notices it. A Redis outage
        counts as "no slot yet" until the timeout. Raises :class:`SlotTimeout`.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        error: Exception | None = None
        while True:
            try:
                token = self.try_acquire()
            except _RETRYABLE as exc:
                if error is None:
                    log.warning("redis unreachable while waiting for a slot on %s", self._key)
                error = exc
            else:
                if token is not None:
                    return token
                if self._wanted_key is not None and timeout > 0:  # it will wait
                    self._client.set(self._wanted_key, 1, px=WANTED_MS)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                cause = f" (redis: {error})" if error is not None else ""
                raise SlotTimeout(
                    f"all {self._limit} association slots of {self._key} stayed busy for "
                    f"{timeout:g} s{cause}"
                ) from error
            time.sleep(min(remaining, random.uniform(POLL_MIN_S, POLL_MAX_S)))

    def refresh(self, token: str) -> bool:
        """Extend the lease to ``lease_seconds`` from now. False if it was lost (expired,
        released, or forgotten by a Redis restart without AOF): the caller then holds an
        association the cap no longer counts and should close it or acquire again."""
        args = [token, str(self._lease_ms)]

        def call() -> Any:
            return self._refresh(keys=[self._key], args=args)

        return bool(int(retry_redis(call, f"slot refresh {self._key}")))

    def release(self, token: str) -> None:
        """Give the slot back at once. Best effort when Redis stays unreachable for
        :data:`RELEASE_OUTAGE_S`: the lease then expires by itself."""
        try:
            retry_redis(
                lambda: self._client.zrem(self._key, token),
                f"slot release {self._key}",
                outage_s=RELEASE_OUTAGE_S,
            )
        except _RETRYABLE as exc:
            log.warning(
                "could not release slot on %s (%s); it expires within %g s",
                self._key,
                exc,
                self.lease_seconds,
            )

    def held(self) -> int:
        """Leases not yet expired (for tests and `migrator status`)."""
        return int(self._held(keys=[self._key]))

    def __repr__(self) -> str:
        return (
            f"AssociationSlots({self._key!r}, limit={self._limit}, lease={self.lease_seconds:g}s)"
        )
