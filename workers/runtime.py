"""Per-process resources of a worker, created lazily on first use.

Celery kills a pool child whose `worker_process_init` takes more than 4 s, so nothing here
connects at import or process start: the Redis client, the association pool and the
limiters are made by the first task that needs them, then reused by every later task of
the same process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from migrator.jobconfig import JobConfig
from migrator.keys import limiter_key, slots_key
from migrator.limits.rate import RateLimiter
from migrator.limits.rate_redis import make_redis_limiter
from migrator.limits.slots import AssociationSlots
from workers.pool import AssociationPool, Lease

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

T = TypeVar("T")


def redis_url() -> str:
    """The ledger's Redis: ``MIGRATOR_REDIS_URL``."""
    return os.environ.get("MIGRATOR_REDIS_URL", DEFAULT_REDIS_URL)


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


def connect(url: str | None = None) -> redis.Redis:
    """A client that rides out a Redis restart (AOF on): commands are retried with backoff
    for about 30 s before an error reaches the task (which then retries the batch). A wrong
    password or a user without rights is not an outage: it raises at once."""
    return redis.Redis.from_url(
        redis_py_url(url or redis_url()),
        health_check_interval=30,
        retry=_RetryOutages(ExponentialBackoff(cap=2.0, base=0.1), retries=20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
    )


class _SlotLease:
    def __init__(self, slots: AssociationSlots, token: str) -> None:
        self._slots = slots
        self._token = token

    def refresh(self) -> bool:
        return self._slots.refresh(self._token)

    def release(self) -> None:
        self._slots.release(self._token)


@dataclass
class Runtime:
    client: redis.Redis
    pool: AssociationPool = field(init=False)
    _limiters: dict[str, RateLimiter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pool = AssociationPool(self._lease)

    def limiter(self, config: JobConfig) -> RateLimiter:
        key = limiter_key(config.destination)
        if key not in self._limiters:
            self._limiters[key] = make_redis_limiter(self.client, key, config.limits)
        return self._limiters[key]

    def _lease(self, config: JobConfig) -> Lease | None:
        if not config.max_associations:
            return None
        slots = AssociationSlots(
            self.client, slots_key(config.destination), config.max_associations
        )
        # Waiting for a slot is bounded by the DIMSE timeout so a batch never hangs.
        return _SlotLease(slots, slots.acquire(timeout=max(60.0, config.dimse_timeout)))


_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(connect())
        return _runtime


def shutdown(*_: Any, **__: Any) -> None:
    """Release associations (and their fleet-wide slots) when the process exits."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.pool.close_all()
            _runtime = None
