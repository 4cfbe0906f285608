"""The Redis client every command and worker uses: retries outages, not refusals."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from migrator.env import redis_ride_out, redis_url

T = TypeVar("T")


def redis_py_url(url: str) -> str:
    """redis-py spells Celery's ``redis+socket:///path`` as ``unix:///path``."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://") :]
    return url


#: Refusals, not outages: redis-py raises them as ConnectionError subclasses (also for the
#: server's WRONGPASS / NOAUTH replies), so a plain ``retry_on_error=[ConnectionError]``
#: would retry a wrong password for ~35 s before anyone sees it.
NOT_RETRIED: tuple[type[Exception], ...] = (
    redis.AuthenticationError,
    redis.exceptions.AuthorizationError,
)


#: The backoff between tries of a command against a lost Redis: 0.2, 0.4, 0.8, 1.6, then 2 s.
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0
#: The default ride-out (``MIGRATOR_REDIS_RIDE_OUT``): 20 retries with that backoff, long
#: enough for a Redis restart that reloads its AOF (test_engine.py::test_redis_restart_mid_job).
DEFAULT_RIDE_OUT_S = 35.0


class _CappedBackoff(ExponentialBackoff):
    """ExponentialBackoff whose exponent stops growing once the sleep is capped: redis-py
    before 6 computes ``base * 2**failures`` as is, an OverflowError from the 1,024th
    failure (a ride-out of ~2,043 s or more) in the middle of an outage."""

    def compute(self, failures: int) -> float:
        return super().compute(min(failures, 64))  # 0.1 * 2**64 s: far past the cap


def _backoff() -> ExponentialBackoff:
    return _CappedBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)


def retries_for(ride_out_s: float) -> int:
    """The fewest retries whose backoff sleeps add up to ``ride_out_s`` (0 s: none). The
    budget counts the sleeps only: each try against a host that does not answer at all can
    add up to the 5 s connect timeout; a closed port or a restarting Redis refuses at once.

    Closed form (a day's ride-out, the most allowed, is 43,000 retries): the few doubling
    sleeps below the cap one by one, then each retry sleeps the cap."""
    backoff, retries, slept = _backoff(), 0, 0.0
    while slept < ride_out_s - 1e-9:
        step = backoff.compute(retries + 1)
        if step >= BACKOFF_CAP_S:
            left = ride_out_s - slept - 1e-9  # (the loop's own tolerance)
            return retries + math.ceil(left / BACKOFF_CAP_S)
        retries += 1
        slept += step
    return retries


class _RetryOutages(Retry):
    """redis-py's Retry, minus the refusals in :data:`NOT_RETRIED` (they raise at once)."""

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, NOT_RETRIED):
                return False
            return is_retryable is None or is_retryable(error)

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def connect(url: str | None = None, *, ride_out: bool = True) -> redis.Redis:
    """A client that rides out a Redis restart (AOF on): commands are retried with backoff
    for ``MIGRATOR_REDIS_RIDE_OUT`` seconds (35) before an error reaches the task (which
    then retries the batch) or the command (which exits). A wrong password or a user
    without rights is not an outage: it raises at once.

    ``ride_out=False``: a Redis nobody will restart (`run`'s embedded one): a lost
    connection raises at once, so that the run says its Redis died instead of waiting."""
    retries = retries_for(redis_ride_out(DEFAULT_RIDE_OUT_S)) if ride_out else 0
    return redis.Redis.from_url(
        redis_py_url(url or redis_url()),
        health_check_interval=30,
        retry=_RetryOutages(_backoff(), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
    )


#: The Redis of the job this process sends for (set by each sending runtime:
#: migrator/transfer/runtime.py), for what the sources need fleet-wide (a ``dimse://``
#: source's own rate limit and association slots: migrator/sources/protect.py).
_sending: redis.Redis | None = None


def set_sending_client(client: redis.Redis) -> None:
    global _sending
    _sending = client


def sending_client() -> redis.Redis:
    """The sending runtime's client; else one to MIGRATOR_REDIS_URL (a worker's)."""
    global _sending
    if _sending is None:
        _sending = connect()
    return _sending
