"""Open connections to one destination, kept and reused by one sending process.

Keyed by what was negotiated: a connection is handed out for a file only when it covers the
file's (SOP class, transfer syntax) pair (``Connection.covers``). A pair the open ones do
not cover gets a new connection planned for it (and for the rest of the work at hand, up to
128 contexts per association): work with more than 128 pairs is spread over several
associations, and a syntax first seen in a later batch is asked for again instead of being
re-encoded for nothing.

Lifetime: lazy (opened on first need), reused across batches of a worker process, reopened
when the PACS may have closed it (idle longer than ``IDLE_REOPEN``: Orthanc closes idle
associations after 30 s), closed when more than ``capacity`` would be open. A fleet-wide
cap on associations per destination is honoured through leases (``migrator.limits.slots``)
held for as long as a connection is open, refreshed every few seconds while it is used; a
lease lost meanwhile (expired during a long wait) closes the connection rather than let the
fleet exceed the cap. One thread uses a pool; ``abort_all`` is the one call safe from
another thread (an overall deadline).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Protocol

from migrator.contexts import plan_profiles
from migrator.errors import MigratorError
from migrator.transfer.destination import Connection, Destination, Pair
from migrator.transfer.observe import NULL_OBSERVER, Observer

log = logging.getLogger(__name__)

#: Reopen rather than reuse a connection idle for longer than this (seconds).
IDLE_REOPEN = 20.0
#: Refresh the fleet-wide slot lease (30 s) at most this often.
LEASE_REFRESH = 5.0


class Lease(Protocol):
    def refresh(self) -> bool: ...
    def release(self) -> None: ...


#: A fleet-wide slot for one more connection; ``wait``: up to its timeout, else only a slot
#: free right now (SlotTimeout otherwise).
LeaseProvider = Callable[[bool], "Lease | None"]


@dataclass(eq=False, slots=True)
class _Entry:
    conn: Connection
    lease: Lease | None
    last_used: float
    last_refresh: float
    busy: bool = True


class ConnectionPool:
    def __init__(
        self,
        destination: Destination,
        *,
        capacity: int = 1,
        lease_provider: LeaseProvider | None = None,
        observer: Observer = NULL_OBSERVER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.destination = destination
        #: Connections open at most (idle ones are closed to stay under it)
        self.capacity = capacity
        self._lease_provider = lease_provider
        self._observer = observer
        self._clock = clock
        self._entries: list[_Entry] = []
        self._seen: set[Pair] = set()
        self._lock = threading.Lock()  # against abort_all and close_all from another thread
        self._releasing: list[threading.Thread] = []  # retired, their release under way
        self.opened = 0
        self.discarded = 0

    def __len__(self) -> int:
        return len(self._entries)

    def checkout(
        self, needed: Pair, wanted: Set[Pair], *, fresh: bool = False, wait: bool = True
    ) -> Connection:
        """A connection covering ``needed``, reused or opened (planned over ``wanted``);
        ``fresh``: one that has carried nothing yet; ``wait``: for a fleet-wide slot, when
        none is free (a process that has a connection already takes a second one only when
        a slot is free: waiting would hold up the answers on its others). Raises
        ConnectError / AssociationRejected / SlotTimeout when none can be opened."""
        now = self._clock()
        for entry in sorted(self._idle(), key=lambda e: -e.last_used):
            if fresh and entry.conn.requests:
                continue
            if not entry.conn.alive:
                self._drop(entry, graceful=False)
            elif now - entry.last_used > IDLE_REOPEN:
                self._drop(entry, graceful=True)
            elif entry.conn.covers(needed):
                if entry.lease is not None and now - entry.last_refresh > LEASE_REFRESH:
                    entry.last_refresh = now
                    if not entry.lease.refresh():
                        # Expired (a long wait): its slot may be another worker's by now.
                        log.info("association slot lease lost; reopening under a new one")
                        self._drop(entry, graceful=True)
                        continue
                entry.busy = True
                entry.last_used = now
                return entry.conn
        while len(self._entries) >= self.capacity:
            idle = self._idle()
            if not idle:
                break
            self._drop(min(idle, key=lambda e: e.last_used), graceful=True)
        return self._open(needed, wanted, now, wait)

    def open_ahead(
        self, needed: Pair, wanted: Set[Pair], count: int
    ) -> tuple[int, list[MigratorError]]:
        """Open up to ``count`` more connections at once, idle for the next checkouts.

        Each costs round trips (TCP, then the association): opened one after the other by
        the sending thread, ``-j auto`` growing from 8 to 16 associations 20 ms away would
        hold every answer up for 8 × 40 ms. So the connects run in threads, side by side,
        while the fleet-wide slots are taken here first (only free ones: no waiting).
        Returns how many were opened, and why the others were not."""
        spare = [e for e in self._idle() if e.conn.alive and e.conn.covers(needed)]
        count = min(count - len(spare), self.capacity - len(self._entries))
        if count <= 0:
            return 0, []
        pairs = self._plan(needed, wanted)
        leases: list[Lease | None] = []
        errors: list[MigratorError] = []
        for _ in range(count):
            try:
                leases.append(self._lease_provider(False) if self._lease_provider else None)
            except MigratorError as exc:  # SlotTimeout: the fleet holds every slot
                if not leases:
                    return 0, [exc]
                errors = [exc]
                break
        results: list[Connection | MigratorError | None] = [None] * len(leases)

        def connect(i: int) -> None:
            try:
                results[i] = self.destination.connect(needed, pairs)
            except MigratorError as exc:
                results[i] = exc

        threads = [
            threading.Thread(target=connect, args=(i,), name="migrator-open", daemon=True)
            for i in range(len(leases))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        now = self._clock()
        opened = 0
        for result, lease in zip(results, leases, strict=True):
            if isinstance(result, MigratorError) or result is None:
                if lease is not None:
                    lease.release()
                errors.append(result or MigratorError("the connection could not be opened"))
                continue
            self.opened += 1
            opened += 1
            self._observer.association_opened()
            with self._lock:
                self._entries.append(_Entry(result, lease, now, now, busy=False))
        return opened, errors

    def checkin(self, conn: Connection) -> None:
        """``conn`` is free for the next file (kept open, or dropped when dead)."""
        entry = self._find(conn)
        if entry is None:
            return
        entry.busy = False
        entry.last_used = self._clock()
        if not conn.alive:
            self._drop(entry, graceful=False)

    def retire(self, conn: Connection) -> None:
        """Close ``conn`` in good order and forget it (the PACS is out of resources: the
        next file goes on a fresh association; ``-j auto`` wants fewer). The release's
        round trip runs in a thread: the sender's other associations go on meanwhile."""
        entry = self._find(conn)
        if entry is not None:
            with self._lock:
                self._entries.remove(entry)
            self._release_later(entry)

    def discard(self, conn: Connection) -> None:
        """Abort and forget a connection whose last request's outcome is unknown."""
        entry = self._find(conn)
        if entry is not None:
            self.discarded += 1
            self._observer.association_aborted()
            self._drop(entry, graceful=False)

    def close_all(self) -> None:
        """Release every connection (end of a batch under a fleet-wide cap, exit). Side by
        side: each release is a round trip, 64 of them 20 ms away would take 1.3 s."""
        with self._lock:
            entries, self._entries = self._entries, []
        for entry in entries[1:]:
            self._release_later(entry)
        if entries:
            self._close(entries[0], True)
        # Released once this returns. Another thread may close the pool at the same time
        # (`run`'s idle closer and its end): each joins what was started (never a thread
        # not started yet: _release_later publishes a thread once it runs).
        with self._lock:
            releasing = list(self._releasing)
        for t in releasing:
            t.join()
        with self._lock:
            self._releasing = [r for r in self._releasing if r.is_alive()]

    def abort_all(self) -> None:
        """Abort every open connection; safe from another thread (the sender's own thread
        then sees its requests fail and settles them)."""
        with self._lock:
            conns = [e.conn for e in self._entries]
        for conn in conns:
            conn.abort()

    # -- inside ------------------------------------------------------------------------

    def _idle(self) -> list[_Entry]:
        return [e for e in self._entries if not e.busy]

    def _find(self, conn: Connection) -> _Entry | None:
        return next((e for e in self._entries if e.conn is conn), None)

    def _plan(self, needed: Pair, wanted: Set[Pair]) -> set[Pair]:
        # Plan over what earlier work needed too, when it all fits on one association: a
        # worker alternating between batches of two syntaxes keeps one association.
        pairs = self._seen | set(wanted)
        if len(plan_profiles(pairs | {needed})) > 1:
            pairs = set(wanted)
        self._seen = pairs
        return pairs

    def _open(self, needed: Pair, wanted: Set[Pair], now: float, wait: bool) -> Connection:
        pairs = self._plan(needed, wanted)
        lease = self._lease_provider(wait) if self._lease_provider is not None else None
        try:
            conn = self.destination.connect(needed, pairs)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        self.opened += 1
        self._observer.association_opened()
        with self._lock:
            self._entries.append(_Entry(conn, lease, now, now))
        return conn

    def _release_later(self, entry: _Entry) -> None:
        t = threading.Thread(
            target=self._close, args=(entry, True), name="migrator-release", daemon=True
        )
        t.start()
        with self._lock:
            self._releasing = [r for r in self._releasing if r.is_alive()] + [t]

    def _drop(self, entry: _Entry, *, graceful: bool) -> None:
        with self._lock:
            if entry in self._entries:
                self._entries.remove(entry)
        self._close(entry, graceful)

    @staticmethod
    def _close(entry: _Entry, graceful: bool) -> None:
        try:
            if graceful and entry.conn.alive:
                entry.conn.release()
            else:
                entry.conn.abort()
        finally:
            if entry.lease is not None:
                entry.lease.release()
