"""C-GET and C-MOVE associations to the old PACS, kept open from one request to the next.

Each C-GET used to open its own association and release it after the request: up to 121
presentation contexts negotiated (each SOP class in every syntax), a
release. Against Orthanc on this machine that was ~35 ms of the ~55 ms a request for a
series of five tiny instances took; on one association kept open, a request takes ~20 ms
and a third of the CPU. So an association goes back here after a request that ended
normally, and the next request whose SOP classes it offers takes it.

* **What an association offers**: the SOP classes of the request, then those this source
  met before (most recent first), up to ``MAX_CLASSES`` (retrieve.py: 11 × 11 syntaxes
  + the retrieve and C-FIND contexts stay within 128), so that the series of a batch,
  often of the same few classes, share one; or, for a listing without SOP classes, the
  common storage classes (``wildcard``).
* **Sub-operations** arrive on the association's own thread: its one handler hands them to
  the request under way (``Lease.on_store``).
* **Kept little**: an old archive serves each association on one of a few threads
  (Orthanc: ``DicomThreadsCount``, 4), so an idle association of ours holds one that the
  planner's C-FINDs or another worker may be waiting for (measured: with two kept per
  worker process, listing 300 studies took 42 s instead of 8). ``KEEP`` idle association
  per process, released after ``IDLE_S`` seconds unused, or as soon as a request needs
  classes it does not offer (before a new one opens: never more associations than
  requests under way), and at exit. An association that failed a request, or that the
  source closed meanwhile, is never handed out again.
* **A pool dropped by the garbage collector** (its source was replaced) leaves its idle
  associations to one releasing thread; it never releases them itself. The collector runs
  wherever an allocation happens to trigger it, for instance inside
  ``threading.enumerate()``, which holds the lock every ending thread needs, and an
  A-RELEASE waits up to 10 s for the source's answer. (Seen with pynetdicom's associations,
  whose release waited for their own thread to end: a worker stuck for minutes in 1 of 4
  runs of test_a_source_restarted_mid_job_loses_nothing[run], the collector run inside
  ``threading.enumerate()`` by pynetdicom's ``connection_timeout`` setter.)
* Not used under ``--source-max-associations`` (sources/protect.py): an association kept
  open between requests would hold the source's slot beyond its request.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Idle associations kept at most.
KEEP = 1
#: Seconds an idle association is kept: the gap between two requests of a batch (sending
#: a series' instances) is far shorter; a batch's end frees the source's thread soon.
IDLE_S = 0.5

#: ``open(classes, wildcard)`` -> an established association offering ``classes`` (and the
#: retrieve contexts); each request names where its C-STORE sub-operations go
#: (``Lease.handle``, which hands them to the request's ``on_store``)
Opener = Callable[[Sequence[str], bool], Any]


@dataclass(eq=False)
class Lease:
    """One association and what it offers; ``on_store`` is the request under way's."""

    assoc: Any
    classes: frozenset[str]
    wildcard: bool
    #: True when it served an earlier request (a failure on it may be the source's idle
    #: close: asked again once on a fresh association)
    reused: bool = False
    on_store: Callable[[Any], int] | None = None
    idle_since: float = field(default_factory=time.monotonic)

    def handle(self, event: Any) -> int:
        handler = self.on_store
        if handler is None:
            return 0xA900  # no request under way: nothing was asked for
        return handler(event)


class GetPool:
    def __init__(self, max_classes: int) -> None:
        self._max_classes = max_classes
        self._idle: list[Lease] = []
        self._lock = threading.Lock()
        #: classes met so far, most recent last
        self._seen: dict[str, None] = {}
        self._reaper: threading.Thread | None = None
        _start_releaser()
        # Collected: its idle associations go to the releasing thread (see the docstring).
        # At exit, _at_exit releases those of the pools still alive, on the exiting thread.
        weakref.finalize(self, _left_behind, self._idle).atexit = False
        _POOLS.add(self)

    @contextlib.contextmanager
    def lease(self, classes: Sequence[str], wildcard: bool, opener: Opener) -> Iterator[Lease]:
        """An association for a request needing ``classes`` (a kept one, else one from
        ``opener``): kept open afterwards when the block ends normally, released when it
        raises."""
        lease = self._take(frozenset(classes), wildcard, opener)
        try:
            yield lease
        except BaseException:
            # Aborted, not released: the request may be half-way (the source still sending
            # sub-operations that an A-RELEASE-RQ would leave unanswered).
            lease.on_store = None
            _abort(lease)
            raise
        lease.on_store = None
        self._give_back(lease)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle[:] = list(self._idle), []
        for lease in idle:
            _release(lease)

    # -- inside --------------------------------------------------------------------------

    def _take(self, needed: frozenset[str], wildcard: bool, opener: Opener) -> Lease:
        stale: list[Lease] = []
        found = None
        with self._lock:
            if not wildcard:  # (the common classes offered blind are not classes met)
                for c in sorted(needed):
                    self._seen.pop(c, None)
                    self._seen[c] = None
            now = time.monotonic()
            for lease in list(self._idle):
                if not lease.assoc.is_established or now - lease.idle_since > IDLE_S:
                    self._idle.remove(lease)
                    stale.append(lease)
                elif found is None and lease.wildcard == wildcard and needed <= lease.classes:
                    self._idle.remove(lease)
                    found = lease
            if found is None:
                # None fits: the idle ones go before a new one opens, so that this process
                # never holds more of the source's associations than it has requests.
                stale += self._idle
                self._idle.clear()
            offer = self._offer(needed) if not wildcard else list(needed)
        _release_aside(stale)
        if found is not None:
            found.reused = True
            return found
        assoc = opener(offer, wildcard)
        # What the source accepted, not what was offered: a class it refused is not taken
        # for one this association can carry.
        accepted = {cx.abstract_syntax for cx in getattr(assoc, "accepted_contexts", [])}
        return Lease(assoc, frozenset(c for c in offer if c in accepted), wildcard)

    def _offer(self, needed: frozenset[str]) -> list[str]:
        """The request's classes, then the most recent others met, up to the maximum."""
        offer = sorted(needed)
        for c in reversed(self._seen):
            if len(offer) >= self._max_classes:
                break
            if c not in needed:
                offer.append(c)
        return offer

    def _give_back(self, lease: Lease) -> None:
        if not lease.assoc.is_established:
            return
        lease.idle_since = time.monotonic()
        evicted = None
        with self._lock:
            self._idle.append(lease)
            if len(self._idle) > KEEP:
                evicted = self._idle.pop(0)
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=_reap, args=(weakref.ref(self),), name="migrator-cget-idle", daemon=True
                )
                self._reaper.start()
        if evicted is not None:
            _release_aside([evicted])

    def _reap_once(self) -> bool:
        """Release what has been idle too long; False once nothing is idle."""
        now = time.monotonic()
        with self._lock:
            old = [x for x in self._idle if now - x.idle_since > IDLE_S]
            for lease in old:
                self._idle.remove(lease)
            left = bool(self._idle)
            if not left:
                # Decided under the lock: a lease given back from now on starts a new reaper
                # (this one ends after its releases below).
                self._reaper = None
        for lease in old:
            _release(lease)
        return left


def _reap(pool_ref: weakref.ref[GetPool]) -> None:
    while True:
        time.sleep(IDLE_S / 2)
        pool = pool_ref()
        if pool is None or not pool._reap_once():
            return
        del pool


def _release_aside(leases: list[Lease]) -> None:
    """Released on a thread of their own: an A-RELEASE waits for the source's answer, up to
    the ACSE timeout when the source went away meanwhile (restarted, a reset connection),
    and the request that found them idle must not wait for that."""
    if leases:
        threading.Thread(
            target=_release_each, args=(leases,), name="migrator-cget-release", daemon=True
        ).start()


def _release_each(leases: list[Lease]) -> None:
    for lease in leases:
        _release(lease)


def _abort(lease: Lease) -> None:
    with contextlib.suppress(Exception):
        lease.assoc.abort()


def _release(lease: Lease) -> None:
    assoc = lease.assoc
    try:
        if assoc.is_established:
            assoc.release()
    except Exception as exc:  # the source went away meanwhile: nothing left to release
        log.debug("C-GET association release: %s", exc)
        with contextlib.suppress(Exception):
            assoc.abort()


#: Idle associations of pools the garbage collector dropped, for the releasing thread (and
#: the events _at_exit waits on). A SimpleQueue: its put() is safe in a weakref callback.
_LEFT: queue.SimpleQueue[list[Lease] | threading.Event] = queue.SimpleQueue()
_POOLS: weakref.WeakSet[GetPool] = weakref.WeakSet()
#: (pid, thread): the releasing thread of this process (a forked worker starts its own)
_releaser: tuple[int, threading.Thread] | None = None
_releaser_lock = threading.Lock()
#: Seconds the exit waits for the releasing thread (an A-RELEASE the source does not
#: answer is given up after 10 s: not waited for)
EXIT_WAIT_S = 5.0


def _start_releaser() -> None:
    global _releaser, _LEFT
    with _releaser_lock:
        if _releaser is not None and _releaser[0] == os.getpid():
            return
        if _releaser is None:
            atexit.register(_at_exit)
        else:  # a forked child: what its parent left behind is its parent's to release
            _LEFT = queue.SimpleQueue()
        thread = threading.Thread(target=_release_left, name="migrator-cget-left", daemon=True)
        _releaser = (os.getpid(), thread)
        thread.start()


def _release_left() -> None:
    while True:
        item = _LEFT.get()
        if isinstance(item, threading.Event):
            item.set()  # everything handed over before it is released
        else:
            _release_each(item)


def _left_behind(idle: list[Lease]) -> None:
    """The finalizer of a collected pool: hand its idle associations over, nothing more.
    No lock: the pool is unreachable, so no reaper or request of it runs (the reaper holds
    a strong reference while it works); a list copy and clear are atomic."""
    leases = list(idle)
    idle.clear()
    if leases:
        _LEFT.put(leases)


def _at_exit() -> None:
    """Idle associations released before the process ends (an A-RELEASE, not a dropped
    connection): those of live pools here, those handed over by the releasing thread."""
    for pool in list(_POOLS):
        pool.close_all()
    if _releaser is not None and _releaser[0] == os.getpid():
        drained = threading.Event()
        _LEFT.put(drained)
        drained.wait(EXIT_WAIT_S)
