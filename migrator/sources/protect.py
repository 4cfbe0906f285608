"""The old PACS's own protection: a fleet-wide rate limit and association cap for fetches.

Old archives fall over before new PACS do, and the destination's limits say nothing about
them. ``--source-rate-limit N`` (instances fetched per second) and
``--source-max-associations N`` are kept in the job's Redis like the destination's: the
same GCRA script (:mod:`migrator.limits.rate_redis`, key
:func:`migrator.keys.source_limiter_key`) and the same expiring leases
(:mod:`migrator.limits.slots`, key :func:`migrator.keys.source_slots_key`), per source, so
that every worker process of every host (and `run`'s own sender) shares one budget.

:class:`ProtectedDimseSource` wraps each request of :class:`DimseSource` to the archive
(one C-GET or C-MOVE for a series' instances of a batch, up to 64, on one association):
first the rate, charged as that many instances (waiting holds no association), then a slot
held until the association is released. A fetch served from the spool (the instances of a
series come together, the header is read from the same download) costs neither. The cap
is on the retrieving associations, the ones a fleet multiplies: the planner's listing and
`verify`'s reconciliation each hold one C-FIND association on top (a listing that held a
slot for its minutes would starve the fetches of a cap of 1 into time-outs).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from migrator.keys import source_limiter_key, source_slots_key
from migrator.limits.rate import Limits, RateLimiter
from migrator.limits.rate_redis import make_redis_limiter
from migrator.limits.slots import AssociationSlots
from migrator.sources.dimse import DimseSource
from migrator.sources.retrieve import Received

if TYPE_CHECKING:
    import redis

    from migrator.settings import Settings

log = logging.getLogger(__name__)

#: A source association's lease; refreshed every third of it while the request lasts, so a
#: killed worker's slot comes back within this time.
LEASE_S = 30.0


def source_slots(client: redis.Redis, source: str, limit: int) -> AssociationSlots:
    return AssociationSlots(client, source_slots_key(source), limit, lease_seconds=LEASE_S)


class HeldSlot:
    """One slot of ``slots``, refreshed in the background while held (a context manager)."""

    def __init__(self, slots: AssociationSlots, timeout: float) -> None:
        self._slots = slots
        self._timeout = timeout
        self._done = threading.Event()
        self._token = ""
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HeldSlot:
        self._token = self._slots.acquire(self._timeout)
        self._thread = threading.Thread(target=self._refresh, daemon=True, name="source-slot")
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._done.wait(LEASE_S / 3):
            try:
                self._slots.refresh(self._token)
            except Exception as exc:  # Redis gone for long: the lease expires, the fetch goes on
                log.warning("source slot %r not refreshed: %s", self._slots, exc)
                return

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._slots.release(self._token)


class ProtectedDimseSource(DimseSource):
    """A :class:`DimseSource` whose downloads go under the source's fleet-wide limits.

    Redis is reached only when an instance is downloaded (a planner listing the source
    never needs it), through the sending runtime's client."""

    def __init__(self, uri: str, settings: Settings, **kwargs: object) -> None:
        super().__init__(uri, settings, **kwargs)  # type: ignore[arg-type]
        self._rate = settings.source_rate_limit
        self._max = settings.source_max_associations
        self._limiter: RateLimiter | None = None
        self._slots: AssociationSlots | None = None
        self._lock = threading.Lock()

    def _protection(self) -> tuple[RateLimiter | None, AssociationSlots | None]:
        with self._lock:
            if self._limiter is None and self._slots is None:
                from migrator.redis_client import sending_client

                client = sending_client()
                if self._rate:
                    # A burst of one: an old archive sees the rate, never a volley.
                    limits = Limits(self._rate, None, burst_files=1)
                    self._limiter = make_redis_limiter(client, source_limiter_key(self.uri), limits)
                if self._max:
                    self._slots = source_slots(client, self.uri, self._max)
            return self._limiter, self._slots

    def _retrieve(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        """One request to the source (C-GET, or C-MOVE to our SCP) for ``wanted``, a
        series' instances (up to 64): charged as that many instances, on one slot."""
        limiter, slots = self._protection()
        if limiter is not None:
            limiter.acquire(len(wanted))  # more than the burst: admitted, paid as debt
        if slots is None:
            return super()._retrieve(study, series, wanted)
        # SlotTimeout (all slots busy that long) is a transient error: the files are retried.
        with HeldSlot(slots, self.config.acse_timeout):
            return super()._retrieve(study, series, wanted)
