"""The per-file policy: one behaviour for `store`, `run`'s inline sender and the workers.

For each file: read (fetch) -> re-inspect -> transform -> send -> classify -> retry or
record one ``FileOutcome``. ``Transfer.run`` drives up to ``concurrency`` connections
("lanes") from one thread: it starts a file on every idle lane, then settles whichever lane
the destination answers first. Threads would fight over the GIL at every response (measured
~150 us of CPU per file with 2-4 threads, ~75 us from one thread), and a lane waiting for a
slow answer holds up no other.

Classification (ARCHITECTURE.md §3, ``migrator.status``): success and warnings are stored;
0xA7xx (out of resources) and a lost association (outcome unknown) are re-sent after a
jittered backoff, on a fresh association, up to ``retries`` times, while the other files
keep flowing; any other failure is permanent. A file during whose sending the PACS ends
the association twice is that file's fault (a malformed codestream that the PACS aborts
on): it fails at once instead of costing minutes of retries.

Connections are a property of the destination, not of a file: a connection that cannot
be opened costs no file an attempt. When other lanes are working, the lane is dropped (the
PACS allows fewer associations); when none is, the destination is retried with backoff and,
after ``retries`` attempts in a row, the transfer stops (``DestinationUnavailable``, or
the permanent ``AssociationRejected``) and returns what it did not settle. So does a
``stop()`` request, an overall deadline, or a retry that a sender which may not wait
(``may_wait=False``: run's inline sender) would need: the caller decides what becomes of
the files left (fail them, leave them to a worker, retry the batch later).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import select
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from migrator import status as st
from migrator.backoff import backoff
from migrator.coerce import CoercionError, CoercionSkipped
from migrator.contexts import plan_profiles
from migrator.dicomfile import DicomHeader
from migrator.errors import (
    AssociationLost,
    AssociationRejected,
    ConnectError,
    Deferred,
    DestinationUnavailable,
    DestinationUnhealthy,
    MigratorError,
    SlotTimeout,
    SourceError,
    WouldWait,
)
from migrator.limits.adaptive import Autotune
from migrator.limits.breaker import Breaker
from migrator.limits.rate import RateLimiter
from migrator.outcomes import FileOutcome, State
from migrator.settings import Settings
from migrator.sources.base import Payload
from migrator.sources.inspect import inspect_with_retries, refusal
from migrator.transfer import precheck
from migrator.transfer.claims import Claims, Waits
from migrator.transfer.destination import Connection, Pair, Pending, SendResult
from migrator.transfer.job import Job
from migrator.transfer.leases import Leases
from migrator.transfer.observe import NULL_OBSERVER, Observer, log_outcome
from migrator.transfer.pool import ConnectionPool
from migrator.transfer.precheck import DestinationConflict
from migrator.transfer.reinspect import reinspect
from migrator.transfer.transform import Transform, identity

log = logging.getLogger(__name__)

#: A batch whose files waited too long for another batch's copy comes back after this long.
DEFER_RETRY = 5.0
#: While waiting (for answers, a backoff), ``tick`` is called at least this often: a batch
#: writes the outcomes it holds, so that a crash re-sends little (docs/reliability.md).
TICK = 0.25

ABORTED_TWICE = "the PACS aborted the association on this file twice"


Sink = Callable[[Job, FileOutcome], None]


#: After the fleet-wide cap had no free slot: seconds before asking for more lanes again
#: (each ask is a round of slot leases in Redis; other senders free theirs at batch ends).
CAPPED_PAUSE_S = 0.25


@dataclass(slots=True)
class Ended:
    """How a transfer ended: ``left`` are the files it did not settle; ``error`` why it
    stopped early (None: every file settled, or a ``stop()`` request)."""

    left: list[Job] = field(default_factory=list)
    error: MigratorError | None = None


@dataclass(eq=False, slots=True)
class _Lane:
    conn: Connection | None = None
    #: Files started on ``conn`` whose answers are still to be read (DIMSE: at most one;
    #: STOW-RS: the files of one request)
    flight: list[tuple[Job, Pending]] = field(default_factory=list)
    #: The fetched payloads of the files staged on ``conn``, released once it flushed
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    ready_at: float = 0.0
    disabled: bool = False
    #: Its answer came while the next file was read ahead: when, is not known, so its
    #: time is no latency sample for -j auto (a slow read would look like a slow PACS)
    overlapped: bool = False
    #: The file being sent on ``conn`` until ``start`` returns: an exception from outside
    #: (Celery's soft time limit) may leave it half on the wire
    sending: Job | None = None
    #: The file whose answer was read and whose outcome is being recorded: an exception
    #: from outside leaves it unrecorded (the association itself is clean)
    settling: Job | None = None


@dataclass(eq=False, slots=True)
class _Ahead:
    """The next file, read, re-inspected and transformed while every lane waited for its
    answer: what it would have been at its start, or the error it would have raised."""

    job: Job
    #: The fetched payload's hold (a spool file, a download), handed to the lane it starts on
    held: contextlib.ExitStack
    header: DicomHeader | None = None
    payload: Payload | None = None
    error: MigratorError | None = None
    #: Size and mtime of the payload's file when it was read: a file changed since then
    #: (the lane could not start it for a while: a connection backoff, a rate-limit wait)
    #: is read again at its start, so that nothing read before the change is sent with it
    stamp: tuple[int, int] | None = None


def _stat(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns)


def _changed(ahead: _Ahead) -> bool:
    """Whether the read-ahead file changed (or went) since it was read; bytes in memory
    do not change."""
    payload = ahead.payload
    if payload is None or payload.path is None:
        return False
    now = _stat(payload.path)
    return now is None or now != ahead.stamp  # gone: read again, which says what is wrong


class Transfer:
    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool,
        limiter: RateLimiter,
        record: Sink,
        *,
        claims: Claims | None = None,
        transform: Transform = identity,
        observer: Observer = NULL_OBSERVER,
        breaker: Breaker | None = None,
        autotune: Autotune | None = None,
        stop: Callable[[], bool] | None = None,
        may_wait: bool = True,
        on_start: Callable[[Job], None] | None = None,
        tick: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self._leases = Leases(limiter, settings.limits)
        self._record_sink = record
        self._waits = (
            Waits(
                claims,
                enqueue=self._ready_append,
                settle=self._settle_as,
                clock=clock,
                on_conflict=settings.on_conflict,
            )
            if claims is not None
            else None
        )
        self._transform = transform
        #: The transform without --precheck's check (each run wraps it with its answer)
        self._base_transform = transform
        self._observer = observer
        self._breaker = breaker
        #: The file sent as the breaker's probe, while it is on its way
        self._probe: Job | None = None
        self._stop_requested = stop
        self._may_wait = may_wait
        self._on_start = on_start
        self._tick = tick
        self._sleep = sleep
        self._clock = clock
        self._ready: collections.deque[Job] = collections.deque()
        self._delayed: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._wanted: set[Pair] = set()
        self._error: MigratorError | None = None
        self._stopped = False
        self._connect_failures = 0
        self._connect_ready_at = 0.0
        #: -j auto: how many lanes, decided as answers come (migrator/limits/adaptive.py)
        self._autotune = autotune
        self._grow_after = 0.0
        self._opened_ahead = False
        #: The next file, made ready while the lanes waited (one at most)
        self._ahead: _Ahead | None = None
        #: Files on the wire when an exception ended the transfer (Celery's soft time
        #: limit, an interrupt): the destination may hold them with nothing recorded.
        self.unanswered: list[Job] = []
        lanes = autotune.target if autotune is not None else settings.concurrency
        self.lanes = [_Lane() for _ in range(max(1, lanes))]
        pool.capacity = max(pool.capacity, settings.max_lanes)

    # -- the loop ----------------------------------------------------------------------

    def run(self, jobs: Iterable[Job]) -> Ended:
        try:
            self._prepare(list(jobs))
            while True:
                if not self._stopped and self._stop_requested and self._stop_requested():
                    self._stopped = True
                if not self._stopped:
                    self._start_ready()
                flying = [lane for lane in self.lanes if lane.flight]
                if flying:
                    self._collect(flying)
                    continue
                if self._stopped or not (self._ready or self._delayed or self._parked()):
                    break
                self._idle_wait()
        finally:
            if self._ahead is not None:  # read ahead, never started: let its payload go
                self._ahead.held.close()
                self._ahead = None
            for lane in self.lanes:
                lane.held.close()
                # Only when an exception ends the transfer (a time limit, an interrupt):
                # files sent whose outcome is not recorded stay unsettled, named for the
                # next delivery to look up at the destination.
                self.unanswered.extend(job for job, _ in lane.flight)
                self.unanswered.extend(j for j in (lane.sending, lane.settling) if j is not None)
                if lane.conn is not None and (lane.flight or lane.sending is not None):
                    # It may hold half a PDU or an answer nobody reads: never reused.
                    self.pool.discard(lane.conn)
                elif lane.conn is not None:
                    self.pool.checkin(lane.conn)
                lane.conn = None
                lane.flight = []
                lane.sending = lane.settling = None
        left = list(self._ready) + [j for _, _, j in sorted(self._delayed)]
        if self._waits is not None:
            left += self._waits.left()
        return Ended(left, self._error)

    def _parked(self) -> bool:
        return self._waits is not None and bool(self._waits.parked)

    def _ready_append(self, job: Job) -> None:
        self._ready.append(job)

    def _settle_as(self, job: Job, state: State, reason: str) -> None:
        self._settle_failed(job, reason, state)

    def _start_ready(self) -> None:
        now = self._clock()
        if self._autotune is not None:
            self._fit_lanes(now)
        self._release_delayed(now)
        if self._waits is not None and self._waits.parked:
            self._waits.recheck(now)
        for lane in list(self.lanes):
            if lane.flight:
                continue  # its request is on the wire: nothing joins it any more
            try:
                # Keep starting on this lane until a file is in flight on it (files settled
                # at once, refused or unreadable, must not leave it idle for a round), and
                # while the next one fits in the same request (STOW-RS).
                while self._ready and not self._stopped and lane in self.lanes:
                    if lane.flight and not self._joins(lane, self._ready[0]):
                        break
                    if lane.disabled or self._lane_due(lane) > now:
                        break
                    probe = self._breaker_allows()
                    if probe is None:
                        return
                    job = self._ready.popleft()
                    if probe:
                        self._probe = job
                    self._start(lane, job)
                    if not lane.flight:
                        lane.held.close()  # settled at once: nothing staged needs it
                    if probe:
                        break  # the probe goes alone
            finally:
                self._flush(lane)

    def _joins(self, lane: _Lane, job: Job) -> bool:
        """Whether ``job`` may join the files staged on ``lane``'s connection."""
        conn = lane.conn
        return (
            conn is not None
            and conn.alive
            and not job.needs_fresh
            and job.header is not None
            and conn.covers(job.pair)
            and conn.room(job.item.size)
        )

    def _flush(self, lane: _Lane) -> None:
        """Put the lane's staged request on the wire, then let its payloads go."""
        try:
            if lane.conn is not None and lane.flight:
                try:
                    lane.conn.flush()
                except AssociationLost as exc:
                    flight, lane.flight = lane.flight, []
                    for job, _ in flight:
                        self._lost(lane, job, exc)
        finally:
            lane.held.close()

    def _breaker_allows(self) -> bool | None:
        """None: send nothing now (the destination's breaker is open, or a probe is on its
        way); True: the next file is the probe; False: the breaker is closed."""
        if self._breaker is None:
            return False
        state = self._breaker.state()
        if state is None:
            return False
        if self._probe is not None:
            return None
        if self._breaker.try_probe():
            log.warning("probing %s: %s", self.pool.destination.name, state.reason)
            return True
        self._stop(
            unhealthy(
                self.pool.destination.name,
                state.since,
                state.reason,
                state.probe_at,
                state.interval,
            )
        )
        return None

    def _fit_lanes(self, now: float) -> None:
        """As many lanes as the controller wants: more when it grows (not before
        ``_grow_after`` when the fleet-wide cap had no slot), fewer when it backs off (idle
        lanes leave at once, busy ones once their answer is in)."""
        assert self._autotune is not None
        want = max(1, self._autotune.target)
        if len(self.lanes) < want and now >= self._grow_after:
            self.lanes += [_Lane() for _ in range(want - len(self.lanes))]
            self._opened_ahead = False
        surplus = len(self.lanes) - want
        if surplus <= 0:
            return
        for lane in [la for la in self.lanes if not la.flight][:surplus]:
            if lane.conn is not None:
                self.pool.retire(lane.conn)  # its slot goes back to the fleet now
            self.lanes.remove(lane)

    def _lane_due(self, lane: _Lane) -> float:
        """When ``lane`` may start a file: after its throttle pause, and, when it must open
        a connection, after the destination's reconnect backoff."""
        if lane.conn is not None and lane.conn.alive:
            return lane.ready_at
        return max(lane.ready_at, self._connect_ready_at)

    def _idle_wait(self) -> None:
        """Nothing in flight: sleep until a delayed file, a lane or a parked file is due."""
        now = self._clock()
        wakes = [self._delayed[0][0]] if self._delayed else []
        if self._ready:
            usable = [lane for lane in self.lanes if not lane.disabled]
            if not usable:  # cannot happen: the last lane is never dropped
                self._stop(DestinationUnavailable("no usable association left"))
                return
            wakes.append(min(self._lane_due(lane) for lane in usable))
        if self._waits is not None and self._waits.parked:
            if not self._ready and not self._delayed and self._waits.expired(now):
                n = len(self._waits.parked)
                self._stop(Deferred(f"{n} files wait for another copy's outcome", DEFER_RETRY))
                return
            wakes.append(self._waits.check_at)
        delay = max(0.0, min(wakes) - now) if wakes else 0.0
        if delay > 0 and not self._may_wait:
            self._stop(WouldWait("a retry would have to wait"))
            return
        if self._tick is not None:
            self._tick()
        self._sleep(delay)

    def _collect(self, flying: list[_Lane]) -> None:
        """Settle the lanes whose answer has come (or the most overdue one)."""
        ready = [lane for lane in flying if _conn(lane).buffered() or not _conn(lane).alive]
        if not ready:
            by_fd = {_conn(lane).fileno(): lane for lane in flying}
            # Nothing to read yet: make the next file ready meanwhile. An answer that comes
            # during it is found by the select below (nothing reads the sockets until then).
            before = self._ahead
            self._read_ahead()
            if self._ahead is not before:  # a file was read (not after an unforeseen error)
                self._note_overlap(by_fd)
            first = min(flying, key=lambda lane: _conn(lane).deadline(lane.flight[0][1]))
            due = _conn(first).deadline(first.flight[0][1])
            timeout = max(0.0, due - self._clock())
            if self._tick is not None:
                self._tick()
                timeout = min(timeout, TICK)
            try:
                readable, _, _ = select.select(list(by_fd), [], [], timeout)
            except (OSError, ValueError):  # a socket closed under us (deadline abort)
                readable = list(by_fd)
            if not readable and self._clock() < due:
                return  # nothing overdue yet: tick again and wait on
            ready = [by_fd[fd] for fd in readable] or [first]
        for lane in ready:
            self._finish(lane)

    # -- one file ----------------------------------------------------------------------

    def _start(self, lane: _Lane, job: Job) -> None:
        if not self._connect(lane, job):
            return
        conn = _conn(lane)
        job.attempts += 1
        try:
            waited = self._leases.take(job, itertools.islice(self._ready, 0, 16))
        except Deferred as exc:  # a paused window of the schedule: stop, send nothing
            job.attempts -= 1
            self._ready.appendleft(job)
            self._stop(exc)
            return
        if waited:
            self._observer.limiter_waited(waited)
            if self._stop_requested is not None and self._stop_requested():
                # Asked to stop while the rate limit held the file back (a pause): it
                # does not start (its reservation is lost: the limit errs on the slow side).
                job.attempts -= 1
                self._ready.appendleft(job)
                self._stopped = True
                return
        if self._on_start is not None:
            self._on_start(job)
        # Anything but the file's own errors (below) ends the transfer with it maybe sent.
        lane.sending = job
        try:
            header, payload = self._made_ready(lane, job)
            sent = conn.start(header, payload)
        except MigratorError as exc:
            lane.sending = None
            self._not_started(lane, job, exc)
            return
        lane.sending = None
        if isinstance(sent, SendResult):
            if not sent.ts_sent and sent.outcome is st.Outcome.PERMANENT:
                # Refused before anything went on the wire (no presentation context): not
                # an offer to the PACS, so the report says "not sent", not "no response".
                # (Permanent only: a retried file must count its attempts, or never stop.)
                job.attempts -= 1
            self._settle(lane, job, sent)
        else:
            lane.flight.append((job, sent))

    def _not_started(self, lane: _Lane, job: Job, exc: MigratorError) -> None:
        """Settle (or retry) ``job`` after its read or its send raised ``exc``."""
        if isinstance(exc, AssociationLost):
            self._lost(lane, job, exc)
        elif isinstance(exc, DestinationConflict):  # --precheck: held under another study
            state = State.SKIPPED if exc.skip else State.FAILED
            self._settle_failed(job, f"{job.uri}: {exc}", state, sent=False)
        elif isinstance(exc, CoercionError):  # --coerce: the file named, then element, rule
            state = State.SKIPPED if isinstance(exc, CoercionSkipped) else State.FAILED
            self._settle_failed(job, f"{job.uri}: {exc}", state, sent=False)
        elif isinstance(exc, SourceError):
            self._settle_failed(job, str(exc))
        elif exc.retryable:  # transient source errors (S3) and the like
            self._retry_or_fail(job, str(exc), destination=False)
        else:
            self._settle_failed(job, str(exc))

    def _made_ready(self, lane: _Lane, job: Job) -> tuple[DicomHeader, Payload]:
        """``job`` fetched (held until ``lane`` flushes: a staged STOW-RS part is read when
        it is sent), re-inspected and transformed: now, or while the lanes waited."""
        ahead = self._ahead
        if ahead is not None and ahead.job is job:
            self._ahead = None
            if _changed(ahead):
                ahead.held.close()
                return self._made_ready(lane, job)  # changed since: read again, as it is now
            lane.held.enter_context(ahead.held)
            if ahead.error is not None:
                raise ahead.error
            assert ahead.header is not None and ahead.payload is not None
            return ahead.header, ahead.payload
        return self._read(lane.held, job)

    def _read(
        self, held: contextlib.ExitStack, job: Job, ahead: _Ahead | None = None
    ) -> tuple[DicomHeader, Payload]:
        """Fetch ``job`` (its hold kept in ``held``), re-inspect and transform it: at its
        start, or read ahead (``ahead`` then gets the file's stamp before it is read)."""
        payload = held.enter_context(job.source.fetch(job.item))
        if ahead is not None and payload.path is not None:
            ahead.stamp = _stat(payload.path)
        return self._transform(reinspect(job, payload), payload)

    def _note_overlap(self, by_fd: dict[int, _Lane]) -> None:
        """Mark the lanes whose answer came while the next file was read ahead."""
        try:
            readable, _, _ = select.select(list(by_fd), [], [], 0)
        except (OSError, ValueError):
            return  # a socket closed under us: the select that follows says so
        for fd in readable:
            by_fd[fd].overlapped = True

    def _read_ahead(self) -> None:
        """While every lane waits for an answer, make the next file ready (fetch, re-inspect,
        transform: a download, a coercion), so that its time overlaps the destination's
        instead of following it. With one lane, coercing tiny files then costs almost no
        wall time (bench/coerce_bench.py). An error is kept and raised when the file starts,
        so the file is settled exactly as if it had been read then; its payload is let go
        at once (a refused file holds no spool space while it waits). Anything else (a bug,
        a Redis error, Celery's soft time limit, which is an Exception and comes once)
        ends the transfer now: the files on the wire are left ``unanswered``, for the next
        delivery to look up at the destination."""
        if self._ahead is not None or not self._ready or self._stopped:
            return
        job = self._ready[0]
        ahead = _Ahead(job, contextlib.ExitStack())
        try:
            ahead.header, ahead.payload = self._read(ahead.held, job, ahead)
        except MigratorError as exc:
            ahead.held.close()
            ahead.error = exc.with_traceback(None)  # no frame keeps the payload alive
        except BaseException:
            ahead.held.close()
            raise
        self._ahead = ahead

    def _connect(self, lane: _Lane, job: Job) -> bool:
        """Make ``lane`` hold a connection covering ``job``; False (job back in line) when
        none could be opened."""
        conn = lane.conn
        fresh = job.needs_fresh
        usable = conn is not None and conn.alive and conn.covers(job.pair)
        if conn is not None and usable and not (fresh and conn.requests):
            return True
        if conn is not None:
            self.pool.checkin(conn)
            lane.conn = None
        alone = not self._working(lane)
        if not alone and not self._opened_ahead:
            self._open_ahead(job)
        try:
            lane.conn = self.pool.checkout(job.pair, self._wanted, fresh=fresh, wait=alone)
        except (ConnectError, AssociationRejected) as exc:
            self._ready.appendleft(job)  # a connection failure costs the file nothing
            self._connect_failed(lane, exc, job)
            return False
        self._connect_failures = 0
        return True

    def _open_ahead(self, job: Job) -> None:
        """Open the associations every lane still lacks side by side (each costs round
        trips: one after the other, 64 of them 20 ms away hold every answer up for 2.6 s).
        Only once one is open, so an unreachable PACS costs one connect timeout, not two;
        then again after -j auto adds lanes."""
        self._opened_ahead = True
        missing = sum(1 for la in self.lanes if la.conn is None or not la.conn.alive)
        if missing < 2:
            return
        _, errors = self.pool.open_ahead(job.pair, self._wanted, missing)
        for exc in errors:
            if self._autotune is not None and isinstance(exc, SlotTimeout):
                self._grow_after = self._clock() + CAPPED_PAUSE_S
                self._autotune.capped(len(self.pool))
            elif (
                self._autotune is not None
                and isinstance(exc, AssociationRejected)
                and exc.retryable  # busy: fewer lanes
            ):
                self._autotune.congestion(str(exc))
            break  # one reason is enough: the lanes that get none ask on their own

    def _connect_failed(
        self, lane: _Lane, exc: ConnectError | AssociationRejected, job: Job
    ) -> None:
        if not exc.retryable:  # rejected for good (wrong AE title...): nothing will go
            self._stop(exc)
            return
        working = self._working(lane)
        if working and self._autotune is not None:
            # -j auto: a PACS turning associations away is congestion (fewer lanes); the
            # fleet-wide cap without a free slot just stops growth for a while.
            if isinstance(exc, SlotTimeout):
                # As many as this sender holds (busy or opened ahead, not yet checked
                # out): at a batch's start most lanes have not picked theirs up yet.
                self._grow_after = self._clock() + CAPPED_PAUSE_S
                self._autotune.capped(len(self.pool))
            else:
                self._autotune.congestion(str(exc))
            self.lanes.remove(lane)
            return
        if working:
            # The PACS (or the fleet-wide cap) allows fewer associations than asked for:
            # go on with those there are.
            lane.disabled = True
            level = logging.INFO if isinstance(exc, SlotTimeout) else logging.WARNING
            log.log(level, "%s; going on with %d associations", exc, len(working))
            return
        unreachable = isinstance(exc, ConnectError) and exc.unreachable
        if self._breaker is not None and (job is self._probe or not unreachable):
            # A PACS that answers and misbehaves (no answer to the association request,
            # busy) is unhealthy: counted, and a probe that cannot associate failed. One that
            # cannot be reached at all (down, a wrong port) is left to the connection
            # retries: such a job ends with exit 3, it does not wait.
            self._breaker_failed(job, str(exc))
            if self._stopped:
                return
        self._connect_failures += 1
        if self._connect_failures > self.settings.retries:
            why = str(exc)
            if isinstance(exc, AssociationRejected) and not self.settings.max_associations:
                why += "; the PACS limits simultaneous associations: give --max-associations"
            self._stop(DestinationUnavailable(why, rejected=isinstance(exc, AssociationRejected)))
            return
        if not self._may_wait:
            self._stop(WouldWait(str(exc)))
            return
        log.warning("cannot associate (%s); retry %d", exc, self._connect_failures)
        self._connect_ready_at = self._clock() + self._backoff(self._connect_failures)

    def _working(self, lane: _Lane) -> list[_Lane]:
        """The other lanes that hold a live connection."""
        return [o for o in self.lanes if o is not lane and o.conn is not None and o.conn.alive]

    def _finish(self, lane: _Lane) -> None:
        conn = _conn(lane)
        try:
            # A file leaves the flight once its answer is read: an exception from outside
            # (Celery's soft time limit) while an answer is read leaves the rest in it.
            while lane.flight:
                job, pending = lane.flight[0]
                try:
                    sent = conn.finish(pending)
                except AssociationLost as exc:
                    flight, lane.flight = lane.flight, []
                    for lost, _ in flight:  # one answer for all of them: all unknown
                        self._lost(lane, lost, exc)
                    return
                del lane.flight[0]
                lane.settling = job
                self._settle(lane, job, sent)
                lane.settling = None
        finally:
            lane.overlapped = False

    def _lost(self, lane: _Lane, job: Job, exc: AssociationLost) -> None:
        # The file's doing only when the PACS ended an association that carried nothing
        # before it: one aborted after N stores whatever they were (a PACS limit, an idle
        # close) says nothing about the file, and its retry goes on a fresh association.
        fresh = lane.conn is not None and lane.conn.requests <= 1
        if lane.conn is not None:
            self.pool.discard(lane.conn)
            lane.conn = None
        job.needs_fresh = job.needs_fresh or exc.by_peer
        reason = f"outcome unknown: {exc}"
        self._retry_or_fail(job, reason, by_peer=exc.by_peer and fresh)

    def _settle(self, lane: _Lane, job: Job, sent: SendResult) -> None:
        if self.settings.throttle_delay:
            lane.ready_at = self._clock() + self.settings.throttle_delay
        if sent.outcome is not st.Outcome.TRANSIENT and self._breaker is not None:
            self._breaker.succeeded()  # the PACS answers: whatever it said, it is up
        if self._autotune is not None and sent.status is not None:
            if sent.outcome is st.Outcome.TRANSIENT:
                self._autotune.congestion(sent.error)  # out of resources: fewer lanes
            elif not lane.overlapped:
                self._autotune.answered(sent.seconds)
        if sent.outcome in (st.Outcome.STORED, st.Outcome.WARNING):
            out = self._outcome(job, State.STORED, sent.error, sent.status)
            out.ts_sent, out.transcoded = sent.ts_sent, sent.transcoded
            out.warning = sent.outcome is st.Outcome.WARNING
            out.bytes = job.item.size
            out.seconds = sent.seconds
            self._record(job, out)
            return
        if sent.outcome is st.Outcome.TRANSIENT:
            # Out of resources: back off, and re-send on a fresh association.
            if lane.conn is not None:
                self.pool.retire(lane.conn)
                lane.conn = None
            self._retry_or_fail(
                job, sent.error, sent.status, sent.ts_sent, not_before=sent.retry_after
            )
            return
        out = self._outcome(job, State.FAILED, sent.error, sent.status)
        out.ts_sent, out.transcoded, out.seconds = sent.ts_sent, sent.transcoded, sent.seconds
        self._record(job, out)

    def _retry_or_fail(
        self,
        job: Job,
        reason: str,
        status: int | None = None,
        ts_sent: str = "",
        *,
        by_peer: bool = False,
        destination: bool = True,
        not_before: float = 0.0,
    ) -> None:
        """``destination``: the failure was the destination's (the breaker counts it), not
        the source's (an S3 error); ``not_before``: seconds the destination asked to be
        left alone (HTTP Retry-After), when longer than the backoff."""
        if self._breaker is not None and destination:
            self._breaker_failed(job, reason)
        if by_peer:
            job.aborts += 1
            if job.aborts >= 2:
                out = self._outcome(job, State.FAILED, f"{ABORTED_TWICE} ({reason})", status)
                out.ts_sent = ts_sent
                self._record(job, out)
                return
        if job.attempts <= self.settings.retries:
            if not self._may_wait:
                self._ready.appendleft(job)
                self._stop(WouldWait(reason))
                return
            # One line per re-send (no file name: paths may carry patient names).
            log.warning("%s; sending the file again (attempt %d)", reason, job.attempts + 1)
            due = self._clock() + max(not_before, self._backoff(job.attempts))
            heapq.heappush(self._delayed, (due, next(self._seq), job))
            return
        out = self._outcome(
            job, State.FAILED, f"{reason} (gave up after {job.attempts} attempts)", status
        )
        out.ts_sent = ts_sent
        self._record(job, out)

    def _breaker_failed(self, job: Job, reason: str) -> None:
        assert self._breaker is not None
        if job is not self._probe:
            self._breaker.failed(reason)
            return
        self._probe = None
        self._breaker.probe_failed(reason)
        state = self._breaker.state()
        if state is not None:
            name = self.pool.destination.name
            self._stop(unhealthy(name, state.since, reason, state.probe_at, state.interval))

    def _backoff(self, attempt: int) -> float:
        """Exponential, with jitter: senders turned away together (a busy PACS, a PACS
        coming back) must not all come back at the same instant."""
        return backoff(self.settings.retry_backoff, attempt)

    def _release_delayed(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            self._ready.append(heapq.heappop(self._delayed)[2])

    def _stop(self, error: MigratorError) -> None:
        self._stopped = True
        if self._error is None:
            self._error = error

    # -- outcomes ----------------------------------------------------------------------

    def _outcome(self, job: Job, state: State, reason: str, status: int | None) -> FileOutcome:
        h = job.header
        return FileOutcome(
            job.uri,
            state,
            reason,
            status,
            sop_class_uid=h.sop_class_uid if h else "",
            sop_instance_uid=h.sop_instance_uid if h else "",
            ts_original=h.transfer_syntax if h else "",
            attempts=job.attempts,
        )

    def _settle_failed(
        self, job: Job, reason: str, state: State = State.FAILED, *, sent: bool = True
    ) -> None:
        """``sent=False``: refused before its request went out (the transform's verdict),
        so this attempt is not one: the report says "Not sent", not "No response"."""
        outcome = self._outcome(job, state, reason, None)
        if not sent:
            outcome.attempts = max(0, outcome.attempts - 1)
        self._record(job, outcome)

    def _record(self, job: Job, outcome: FileOutcome) -> None:
        if job is self._probe:
            self._probe = None
        self._record_sink(job, outcome)
        self._observer.file_done(outcome)
        log_outcome(outcome)
        if self._waits is not None:
            self._waits.settled(job, outcome.state is State.STORED)

    # -- preparation and duplicates ----------------------------------------------------

    def _prepare(self, jobs: list[Job]) -> None:
        """Read the headers not known yet, claim the SOP Instance UIDs, order the work so
        that files of one association profile go together, and queue it."""
        ready: list[Job] = []
        for job in jobs:
            if job.header is None and not self._read_header(job):
                continue
            ready.append(job)
        self._wanted = {job.pair for job in ready}
        if self.settings.precheck and ready and not self._precheck(ready):
            return
        if self._waits is not None and ready:
            ready = self._waits.split(ready)
        profiles = plan_profiles(self._wanted, forced_syntax=self.settings.transfer_syntax)
        if len(profiles) > 1:
            index = {sop: p.index for p in profiles for sop in p.sop_classes}
            ready.sort(key=lambda job: index.get(job.pair[0], 0))
        self._ready.extend(ready)

    def _precheck(self, jobs: list[Job]) -> bool:
        """--precheck: ask the destination, for all of ``jobs`` at once, which instances it
        holds; each file is then checked against the answer as it is sent. False (the
        transfer stopped, every file left unsettled) when the destination cannot be asked:
        nothing goes unchecked."""
        try:
            found = precheck.held(self.settings, (job.header for job in jobs if job.header))
        except MigratorError as exc:
            self._ready.extend(jobs)
            self._stop(exc)
            return False
        s = self.settings
        self._transform = precheck.Checked(
            self._base_transform, found, s.on_conflict, s.precheck_secret
        )
        return True

    def _read_header(self, job: Job) -> bool:
        """A file planned without reading it (a manifest): its header now; settled (False)
        when it cannot be sent."""
        s = self.settings
        header = inspect_with_retries(job.source, job.item, s.retries, s.retry_backoff)
        problem = refusal(header)
        if problem is not None:
            self._settle_failed(job, problem[1], problem[0])
            return False
        assert isinstance(header, DicomHeader)
        job.header = header
        return True


def _conn(lane: _Lane) -> Connection:
    assert lane.conn is not None
    return lane.conn


def unhealthy(
    name: str, since: float, reason: str, probe_at: float, interval: float
) -> DestinationUnhealthy:
    """The stop of a transfer whose destination's breaker is open."""
    when = time.strftime("%H:%M:%S", time.localtime(since))
    retry_in = max(1.0, probe_at - time.time())
    return DestinationUnhealthy(
        f"{name} failing since {when} ({reason}); probing every {interval:g} s",
        retry_in,
        since=since,
        reason=reason,
    )
