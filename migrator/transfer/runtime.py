"""Per-process resources of a sending process, created lazily on first use.

A Celery pool child (and `run`'s own process while its workers boot) keeps, across batches:
one Redis client, one connection pool per destination (associations reused from batch to
batch) and one fleet-wide rate limiter per destination. Celery kills a pool child whose
`worker_process_init` takes more than 4 s, so nothing here connects at import or process
start: the first batch that needs a resource makes it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from migrator import control
from migrator.errors import MigratorError
from migrator.heap import freeze_set_up
from migrator.keys import breaker_key, concurrency_key, limiter_key, slots_key, slots_wanted_key
from migrator.ledger import Ledger
from migrator.limits.adaptive import Autotune, RedisSignal
from migrator.limits.breaker import RedisBreaker
from migrator.limits.rate import RateLimiter
from migrator.limits.rate_redis import make_redis_limiter
from migrator.limits.schedule_redis import window_assoc, window_paused
from migrator.limits.slots import AssociationSlots
from migrator.redis_client import connect, set_sending_client
from migrator.settings import Settings
from migrator.transfer.destinations import make_destination
from migrator.transfer.observe import NULL_OBSERVER, Observer
from migrator.transfer.pool import ConnectionPool, Lease


class _SlotLease:
    def __init__(
        self, slots: AssociationSlots, token: str, cap: Callable[[], int | None] | None = None
    ) -> None:
        self._slots = slots
        self._token = token
        self._cap = cap

    def refresh(self) -> bool:
        """False (the connection is closed) when the lease expired, or when a schedule's
        new window allows fewer associations than the fleet holds: every holder gives its
        slot back and asks again, so the fleet is down to the new cap within seconds."""
        cap = self._cap() if self._cap is not None else None
        if cap is not None and self._slots.held() > cap:
            self._slots.release(self._token)
            return False
        return self._slots.refresh(self._token)

    def release(self) -> None:
        self._slots.release(self._token)


def _no_metrics(destination: str) -> Observer:
    return NULL_OBSERVER


#: A process idle between batches looks this often whether the job it last sent for was
#: paused, cancelled or finished meanwhile (or its schedule is in a rate=0 window), and then
#: closes the associations it kept for it.
IDLE_CHECK = 0.5


def _finished(client: redis.Redis, job_id: str) -> bool:
    """Every file of the job has its outcome: no batch will come for these associations.
    Kept open, they hold a fleet-wide slot and, on a PACS that serves its open associations
    in turn on a few threads (Orthanc: ``DicomThreadsCount``, 4), a thread each: a `verify`
    right after the job waited up to 1 s per C-FIND for them (0.35-0.8 s against ~5 ms,
    bench/cfind_bench.py) until the PACS's own idle timeout aborted them.

    Nothing in flight is not enough while `plan`/`run` still lists the sources: between two
    batches of a slow listing every planned file is settled, and idle workers would close
    and reopen their associations for every batch."""
    ledger = Ledger(client, job_id)
    return ledger.counts()["in_flight"] <= 0 and not ledger.planning()


@dataclass
class Runtime:
    client: redis.Redis
    #: Per destination, what to tell a worker's metrics (workers/metrics.py); nothing for
    #: `run`'s own process
    observers: Callable[[str], Observer] = _no_metrics
    _pools: dict[tuple[Any, ...], ConnectionPool] = field(default_factory=dict)
    _limiters: dict[str, RateLimiter] = field(default_factory=dict)
    _breakers: dict[str, RedisBreaker] = field(default_factory=dict)
    _autotunes: dict[str, Autotune] = field(default_factory=dict)
    #: Held while a batch is sent (the idle closer never touches a pool in use)
    _busy: threading.RLock = field(default_factory=threading.RLock)
    #: Pool -> the job it last sent for
    _served: dict[int, tuple[ConnectionPool, str, str | None]] = field(default_factory=dict)
    _closer: threading.Thread | None = None
    #: Set to end the closer thread (close_all: the process is done with its pools)
    _closer_done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # The sources' fleet-wide limits (a dimse:// source's) live in the same Redis.
        set_sending_client(self.client)
        freeze_set_up()  # made once per sending process, when its imports are done

    @contextlib.contextmanager
    def sending(self, settings: Settings, job_id: str) -> Iterator[None]:
        """Around one batch of ``job_id``: afterwards, the associations kept for the next
        batch are closed as soon as the job is paused or cancelled."""
        with self._busy:
            pool = self.pool(settings)
            # (the limiter key when the destination has a schedule: its rate=0 windows)
            key = limiter_key(settings.destination) if settings.schedule else None
            self._served[id(pool)] = (pool, job_id, key)
            if self._closer is None:
                self._closer_done = threading.Event()
                self._closer = threading.Thread(
                    target=self._close_when_paused,
                    args=(self._closer_done,),
                    name="idle-closer",
                    daemon=True,
                )
                self._closer.start()
            yield

    def _close_when_paused(self, done: threading.Event) -> None:
        while not done.wait(IDLE_CHECK):
            if not self._busy.acquire(blocking=False):
                continue  # a batch is being sent: it watches the job itself
            try:
                for pool, job_id, key in list(self._served.values()):
                    if len(pool) and (
                        control.state(self.client, job_id) is not None
                        or (key is not None and window_paused(self.client, key))
                        or _finished(self.client, job_id)
                    ):
                        pool.close_all()
            except (redis.RedisError, MigratorError):
                pass  # looked at again in IDLE_CHECK
            finally:
                self._busy.release()

    def pool(self, settings: Settings) -> ConnectionPool:
        """This process's connections to the job's destination (as negotiated for it:
        same PACS, calling AE, forced syntax and TLS)."""
        key = (
            settings.destination,
            settings.calling_ae,
            settings.transfer_syntax,
            settings.tls_settings,
            settings.max_pdu,
            settings.allow_lossy,
            settings.dicomweb_token_file,
            settings.dicomweb_basic_auth_file,
            settings.stow_batch_files,
            settings.stow_batch_bytes,
        )
        pool = self._pools.get(key)
        if pool is None:
            pool = ConnectionPool(
                make_destination(settings),
                capacity=settings.max_lanes,
                lease_provider=self._lease_provider(settings),
                observer=self.observer(settings),
            )
            self._pools[key] = pool
        return pool

    def observer(self, settings: Settings) -> Observer:
        return self.observers(settings.destination)

    def limiter(self, settings: Settings) -> RateLimiter:
        key = limiter_key(settings.destination)
        if key not in self._limiters:
            self._limiters[key] = make_redis_limiter(self.client, key, settings.limits)
        return self._limiters[key]

    def breaker(self, settings: Settings) -> RedisBreaker:
        """The fleet's circuit breaker for the job's destination (this process's view)."""
        key = breaker_key(settings.destination)
        if key not in self._breakers:
            self._breakers[key] = RedisBreaker(self.client, key)
        return self._breakers[key]

    def autotune(self, settings: Settings) -> Autotune | None:
        """``-j auto``: this process's controller for the destination, kept across batches
        (what it learnt stays), told of the fleet's congestion through Redis."""
        if not settings.auto_concurrency:
            return None
        key = concurrency_key(settings.destination)
        if key not in self._autotunes:
            self._autotunes[key] = Autotune(settings.max_lanes, RedisSignal(self.client, key))
        return self._autotunes[key]

    def close_all(self) -> None:
        self._closer_done.set()
        self._closer = None
        for pool in self._pools.values():
            pool.close_all()

    def _lease_provider(self, settings: Settings) -> Any:
        if not settings.max_associations and not settings.schedule:
            return None
        dest = settings.destination
        # Waiting for a slot is bounded by the DIMSE timeout so a batch never hangs.
        wait = max(60.0, settings.dimse_timeout)

        def cap() -> int | None:
            """The schedule's window's assoc=, else --max-associations."""
            if settings.schedule:
                return window_assoc(self.client, limiter_key(dest)) or settings.max_associations
            return settings.max_associations

        def lease(block: bool) -> Lease | None:
            limit = cap()
            if not limit:
                return None
            slots = AssociationSlots(
                self.client, slots_key(dest), limit, wanted_key=slots_wanted_key(dest)
            )
            token = slots.acquire(timeout=wait if block else 0.0)
            return _SlotLease(slots, token, cap if settings.schedule else None)

        return lease


_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime(observers: Callable[[str], Observer] = _no_metrics) -> Runtime:
    """This process's runtime, made on first use (``observers``: a worker's metrics)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(connect(), observers)
        return _runtime


def shutdown(*_: Any, **__: Any) -> None:
    """Release associations (and their fleet-wide slots) when the process exits."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close_all()
            _runtime = None
