"""The fleet-wide rate limiter: :func:`migrator.limits.rate.gcra_reserve` in one Redis Lua script.

Every worker of every host sending to one destination shares two GCRA buckets (files/s and
bytes/s) kept in Redis, so the PACS sees one limit however many workers run. The semantics
are those of :class:`migrator.limits.rate.LocalLimiter` (reserve with wait, FIFO, debt for a
request larger than the burst); only where the state lives and which clock is used differ.

Keys (``key`` is :func:`migrator.keys.limiter_key`, whose ``{destination}`` hash tag keeps
both on one Redis Cluster shard, as a script touching several keys requires):

* ``{key}:conf``  hash ``files_per_s``, ``bytes_per_s``, ``burst_files``, ``burst_bytes``;
  an empty field is "unlimited" (``burst_bytes`` empty = one second of ``bytes_per_s``).
  Written by :func:`set_limits` (``migrator run``/``migrator limit``) and read by the script on
  every reservation, so a change applies to the next reservation of every worker. No expiry:
  it is the user's setting. When the hash does not exist (never set, or a Redis restart
  without AOF lost it) the script uses the limits the worker was started with (``fallback``).
* ``{key}:tat`` string ``"<files> <bytes>"``: the two theoretical arrival times (TAT,
  seconds of Redis ``TIME``; empty for a bucket never charged), one ``SET … PX`` per
  reservation. It expires a little after its latest TAT: an expired TAT is in the
  past, i.e. "bucket full", exactly what an absent one means, so idle destinations leave no
  keys behind and nothing is lost.

Why the time comes from Redis ``TIME``: one clock for every host, so client clock skew
cannot grant or steal a burst. (Epoch seconds as a double have a 0.24 µs granularity: at
1 GB/s that is ~240 bytes per reservation, far below any burst.)

Round trips: one ``EVALSHA`` per :meth:`RedisLimiter.reserve` (~0.1 ms on loopback; a
``SCRIPT LOAD`` the first time and after a ``SCRIPT FLUSH`` or Redis restart, handled by
redis-py's ``register_script``). When both dimensions are unlimited the answer is cached for
:data:`UNLIMITED_CACHE_S`, so an unlimited job costs about one round trip per second per
process, not one per file. At thousands of files/s, callers should reserve several files'
worth at once (``reserve(files=n, nbytes=total)``) when the rate allows.

A Redis restart mid-job must not fail a batch: reservations retry connection errors with a
short backoff for up to :data:`REDIS_OUTAGE_S` before the error is raised. A retried
reservation whose reply was lost may be charged twice; that errs on the slow side. A restart
without AOF forgets the TATs, which grants at most one extra burst.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import redis

from migrator.errors import ConfigError, ScheduledPause
from migrator.limits.rate import Limits, RateLimiter

__all__ = [
    "REDIS_OUTAGE_S",
    "UNLIMITED_CACHE_S",
    "RedisLimiter",
    "conf_key",
    "get_limits",
    "make_redis_limiter",
    "retry_redis",
    "schedule_key",
    "set_limits",
    "state_key",
]

log = logging.getLogger(__name__)

#: How long a worker keeps retrying Redis before giving up: long enough for a Redis restart
#: (or a failover) to finish, short enough for a dead Redis to be reported within a batch.
REDIS_OUTAGE_S: Final = 30.0

#: How long "both dimensions unlimited" is trusted without asking Redis again; also the
#: longest delay before a worker sees limits set on a previously unlimited destination.
UNLIMITED_CACHE_S: Final = 1.0

#: Errors worth retrying: the server is restarting, loading its dataset (``BusyLoadingError``
#: is a ``ConnectionError``) or unreachable for a moment. Script or argument errors are not.
_RETRYABLE: Final = (redis.ConnectionError, redis.TimeoutError)

_FIELDS: Final = ("files_per_s", "bytes_per_s", "burst_files", "burst_bytes")

T = TypeVar("T")


def conf_key(key: str) -> str:
    """The hash holding the limits set by :func:`set_limits`."""
    return f"{key}:conf"


def schedule_key(key: str) -> str:
    """The sorted set of the schedule's window changes (migrator/limits/schedule_redis.py)."""
    return f"{key}:sched"


def state_key(key: str) -> str:
    """The string holding the two TATs (``"<files> <bytes>"``). Not ``:state``, which held
    them as a hash before: a key of the old type must not break a worker of this version."""
    return f"{key}:tat"


def _encode(limits: Limits) -> list[str]:
    """Limits as the four strings stored in the conf hash and passed as fallback ARGV.

    ``repr(float)`` round-trips exactly through Lua's ``tonumber`` (strtod), so the script's
    interval ``1/rate`` is bit-for-bit the one :meth:`Limits.buckets` computes.
    """

    def opt_float(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    return [
        opt_float(limits.files_per_s),
        opt_float(limits.bytes_per_s),
        str(limits.burst_files),
        "" if limits.burst_bytes is None else str(limits.burst_bytes),
    ]


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def set_limits(client: redis.Redis, key: str, limits: Limits) -> None:
    """Store ``limits`` for every worker; they apply from each worker's next reservation.

    Unlimited is written explicitly (empty fields) rather than by deleting the hash, because
    an absent hash means "use the limits the worker started with".
    """
    client.hset(conf_key(key), mapping=dict(zip(_FIELDS, _encode(limits), strict=True)))


def get_limits(client: redis.Redis, key: str) -> Limits | None:
    """The limits stored by :func:`set_limits`, or None when none are stored.

    Raises :class:`~migrator.errors.ConfigError` when the hash was edited into nonsense.
    """
    raw = client.hgetall(conf_key(key))
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        files_per_s = fields.get("files_per_s", "")
        bytes_per_s = fields.get("bytes_per_s", "")
        burst_files = fields.get("burst_files", "")
        burst_bytes = fields.get("burst_bytes", "")
        return Limits(
            files_per_s=float(files_per_s) if files_per_s else None,
            bytes_per_s=float(bytes_per_s) if bytes_per_s else None,
            burst_files=int(burst_files) if burst_files else Limits.burst_files,
            burst_bytes=int(burst_bytes) if burst_bytes else None,
        )
    except ValueError as exc:
        raise ConfigError(f"bad limits stored at {conf_key(key)}: {fields!r}") from exc


def retry_redis(
    call: Callable[[], T],
    what: str,
    *,
    outage_s: float = REDIS_OUTAGE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, retrying connection errors with jittered exponential backoff (50 ms to
    1 s) for up to ``outage_s`` seconds, then raising the last error.

    Workers must survive a Redis restart: a failed reservation would otherwise fail a file
    that nothing is wrong with.
    """
    deadline = time.monotonic() + outage_s
    delay = 0.05
    failures = 0
    while True:
        try:
            result = call()
        except _RETRYABLE as exc:
            failures += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("redis unreachable for %.0f s during %s: %s", outage_s, what, exc)
                raise
            if failures == 1:
                log.warning("redis unreachable during %s (%s); retrying", what, exc)
            sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, 1.0)
            continue
        if failures:
            log.info("redis reachable again for %s after %d failed attempts", what, failures)
        return result


# KEYS[1] conf hash, KEYS[2] state string, KEYS[3] schedule (sorted set, schedule_redis.py).
# ARGV[1] files, ARGV[2] nbytes, ARGV[3] now override ('' = redis TIME),
# ARGV[4..7] fallback files_per_s, bytes_per_s, burst_files, burst_bytes ('' = unlimited).
# Returns {wait as '%.17g' (a Lua number reply would be truncated to an integer), flag,
# seconds to the schedule's next change ('' = none)}; flag 1: unlimited, 2: a paused window
# (the wait is the time left in it; nothing is charged).
# The arithmetic mirrors gcra_reserve operation for operation, in IEEE doubles as in Python,
# so the property test can demand exact equality.
_RESERVE_LUA: Final = """
local function opt(v)
  if v == false or v == nil or v == '' then return nil end
  return tonumber(v)
end

local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local conf = redis.call('HMGET', KEYS[1], 'files_per_s', 'bytes_per_s', 'burst_files',
                        'burst_bytes', 'override_until')
local fps, bps, bf, bb
if conf[1] or conf[2] or conf[3] or conf[4] then
  fps, bps, bf, bb = opt(conf[1]), opt(conf[2]), opt(conf[3]), opt(conf[4])
else
  fps, bps, bf, bb = opt(ARGV[4]), opt(ARGV[5]), opt(ARGV[6]), opt(ARGV[7])
end
-- The schedule's window at `now` (members "index|epoch|files/s|bytes/s|burst|assoc"),
-- unless `migrator limit` overrides it (until an instant, or 'hold' until cleared).
local left = ''
local win = redis.call('ZREVRANGEBYSCORE', KEYS[3], now, '-inf', 'LIMIT', 0, 1)
if win[1] then
  local nxt = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. string.format('%.17g', now), '+inf',
                         'WITHSCORES', 'LIMIT', 0, 1)
  if nxt[2] then left = string.format('%.17g', tonumber(nxt[2]) - now) end
  local ov = conf[5]
  local held = ov == 'hold' or (opt(ov) ~= nil and opt(ov) > now)
  local idx, wf, wb, wburst = string.match(win[1], '^([^|]*)|[^|]*|([^|]*)|([^|]*)|([^|]*)|')
  if not held and idx ~= '-1' then
    fps, bps, bb = opt(wf), opt(wb), nil
    bf = opt(wburst) or bf
    if fps == 0 then
      return {left ~= '' and left or '60', 2, left}
    end
  end
end
if fps == nil and bps == nil then
  return {'0', 1, left}
end
bf = bf or 10  -- Limits.burst_files default

local cost_f = tonumber(ARGV[1])
local cost_b = tonumber(ARGV[2])

-- absent TAT = -inf = bucket full, as in LocalLimiter; the state is "<files> <bytes>"
-- ('' for a bucket never charged)
local state = redis.call('GET', KEYS[2])
local raw_f, raw_b = '', ''
if state then raw_f, raw_b = string.match(state, '^(%S*) (%S*)$') end
local tat_f = opt(raw_f) or -math.huge
local tat_b = opt(raw_b) or -math.huge

local int_f, int_b, burst_b
if fps then int_f = 1 / fps end
if bps then
  int_b = 1 / bps
  burst_b = bb or math.max(1, math.ceil(bps))
end

-- max(cost, burst): a request larger than the burst needs the bucket full, no more (debt)
local send = now
if int_f then
  send = math.max(send, math.max(tat_f, now) + (cost_f - math.max(cost_f, bf)) * int_f)
end
if int_b then
  send = math.max(send, math.max(tat_b, now) + (cost_b - math.max(cost_b, burst_b)) * int_b)
end

-- charge every limited bucket at the send time; an unlimited one keeps its TAT
local latest = now
if int_f then
  tat_f = math.max(tat_f, send) + cost_f * int_f
  raw_f = string.format('%.17g', tat_f)
end
if int_b then
  tat_b = math.max(tat_b, send) + cost_b * int_b
  raw_b = string.format('%.17g', tat_b)
end
if tat_f > latest then latest = tat_f end
if tat_b > latest then latest = tat_b end
-- gone 10 s after the latest TAT: by then both buckets are full, as an absent key says
-- (capped at ~30 years: an absurd debt must not overflow PX's integer). One SET with PX:
-- the state and its expiry in one command (a hash needed HSET + PEXPIRE).
local ttl_ms = math.min(math.ceil((latest - now) * 1000) + 10000, 1e12)
redis.call('SET', KEYS[2], raw_f .. ' ' .. raw_b, 'PX', string.format('%d', ttl_ms))
return {string.format('%.17g', send - now), 0, left}
"""


class RedisLimiter:
    """:class:`~migrator.limits.rate.RateLimiter` shared by every worker through Redis.

    ``fallback`` applies while no limits are stored at ``{key}:conf``. Thread-safe (redis-py
    clients are); one instance per destination and process is enough.
    """

    def __init__(self, client: redis.Redis, key: str, fallback: Limits) -> None:
        self._client = client
        self._key = key
        self._keys = [conf_key(key), state_key(key), schedule_key(key)]
        self._fallback = fallback
        self._fallback_args = _encode(fallback)
        # register_script: EVALSHA, and on NOSCRIPT (flush, restart, failover) SCRIPT LOAD
        # then EVALSHA again, so the script text crosses the network only when needed.
        self._script = client.register_script(_RESERVE_LUA)
        self._unlimited_until = -math.inf

    @property
    def key(self) -> str:
        return self._key

    @property
    def fallback(self) -> Limits:
        return self._fallback

    def reserve(self, files: int = 1, nbytes: int = 0) -> float:
        if time.monotonic() < self._unlimited_until:
            return 0.0
        return self._eval(files, nbytes, "")

    def reserve_at(self, now: float, files: int = 1, nbytes: int = 0) -> float:
        """:meth:`reserve` as if Redis ``TIME`` were ``now`` (seconds); for tests that
        compare the script with :func:`~migrator.limits.rate.gcra_reserve` on a fake clock.
        Bypasses the unlimited cache, which is a real-time optimisation."""
        return self._eval(files, nbytes, repr(float(now)))

    def acquire(self, files: int = 1, nbytes: int = 0) -> float:
        # The slot is ours once reserved; sleeping holds nothing, others reserve behind us.
        wait = self.reserve(files, nbytes)
        if wait > 0:
            time.sleep(wait)
        return wait

    def _eval(self, files: int, nbytes: int, now: str) -> float:
        if files < 0 or nbytes < 0:
            raise ValueError(f"files and nbytes must be >= 0, got {files}, {nbytes}")
        args = [str(int(files)), str(int(nbytes)), now, *self._fallback_args]

        def call() -> Any:
            return self._script(keys=self._keys, args=args)

        wait_text, flag, left = retry_redis(call, f"rate limiter {self._key}")
        if int(flag) == 2:
            raise ScheduledPause(float(wait_text))
        if int(flag):
            # Trusted until the schedule's next change at most: every worker switches then.
            cache = min(UNLIMITED_CACHE_S, float(left)) if left else UNLIMITED_CACHE_S
            self._unlimited_until = time.monotonic() + cache
            return 0.0
        return max(0.0, float(wait_text))

    def __repr__(self) -> str:
        return f"RedisLimiter({self._key!r}, fallback={self._fallback!r})"


def make_redis_limiter(client: redis.Redis, key: str, limits: Limits) -> RateLimiter:
    """A :class:`RedisLimiter` even when ``limits`` is unlimited: limits can be set while the
    job runs (``migrator limit``), and the unlimited cache keeps that case cheap."""
    return RedisLimiter(client, key, fallback=limits)
