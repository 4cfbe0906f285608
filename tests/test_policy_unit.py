"""The per-file policy's branches that real peers reach only slowly or by chance: requests
of several files (STOW-RS), the circuit breaker's probe, -j auto's lanes, a stop request,
the payloads a lane holds. Scripted connections on a controllable clock, as in
test_transfer_unit.py (the behaviour through real peers: test_transfer_behaviour.py,
test_stow.py, test_breaker.py, test_adaptive.py). Written for the mutation survivors of
migrator/transfer/policy.py (docs/testing.md)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field

import pytest

from migrator import status as st
from migrator.dicomfile import DicomHeader
from migrator.errors import (
    AssociationLost,
    ConfigError,
    ConnectError,
    DestinationUnhealthy,
    SourceError,
    TransientError,
    WouldWait,
)
from migrator.limits.breaker import FIRST_PROBE, THRESHOLD, LocalBreaker
from migrator.limits.rate import NullLimiter
from migrator.outcomes import FileOutcome, State
from migrator.settings import Settings
from migrator.sources.base import Payload, SourceItem
from migrator.transfer.claims import MemoryClaims
from migrator.transfer.destination import Pair, SendResult
from migrator.transfer.job import Job
from migrator.transfer.policy import Transfer
from migrator.transfer.pool import ConnectionPool
from tests.test_transfer_unit import CT, EXPLICIT, Clock, FakeConn, FakeDestination


class Source:
    """Records which payloads are held (fetched and not yet let go)."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.most_held = 0

    @contextlib.contextmanager
    def fetch(self, item: SourceItem) -> Iterator[Payload]:
        self.held.add(item.uri)
        self.most_held = max(self.most_held, len(self.held))
        try:
            yield Payload(data=b"same bytes")
        finally:
            self.held.discard(item.uri)

    def iter_items(self) -> Iterator[SourceItem]:
        return iter(())


def jobs(
    source: Source, n: int, *, uid: Callable[[int], str] = lambda i: f"1.2.3.{i}"
) -> list[Job]:
    return [
        Job(
            SourceItem(f"mem://{i}", 100),
            source,
            DicomHeader(CT, uid(i), EXPLICIT, "1.2", "1.3", 0, 100, False),
        )
        for i in range(n)
    ]


@dataclass(eq=False)
class BatchConn(FakeConn):
    """A STOW-RS-like connection: ``start`` stages a file, ``flush`` sends the staged files
    as one request (its payloads are read then), ``finish`` reads each file's answer."""

    source: Source | None = None
    per_request: int = 3
    lose_flushes: list[bool] = field(default_factory=list)
    staged: list[str] = field(default_factory=list)
    on_wire: set[str] = field(default_factory=set)
    sent_requests: list[list[str]] = field(default_factory=list)

    def start(self, header: DicomHeader, payload: Payload) -> object:
        self.requests += 1
        self.staged.append(header.sop_instance_uid)
        return header

    def room(self, size: int) -> bool:
        return len(self.staged) < self.per_request

    def flush(self) -> None:
        if not self.staged:
            return
        assert self.source is not None
        uris = {f"mem://{uid.rsplit('.', 1)[1]}" for uid in self.staged}
        assert uris <= self.source.held, "a payload was let go before its request was sent"
        staged, self.staged = self.staged, []
        if self.lose_flushes and self.lose_flushes.pop(0):
            self.alive = False
            raise AssociationLost("connection reset while sending the request")
        self.sent_requests.append(staged)
        self.on_wire.update(staged)

    def finish(self, pending: object) -> SendResult:
        assert isinstance(pending, DicomHeader)
        assert pending.sop_instance_uid in self.on_wire, "answer read before the request was sent"
        self.sent.append(pending.sop_instance_uid)
        return SendResult(st.Outcome.STORED, 0, pending.transfer_syntax, False)


class BatchDestination(FakeDestination):
    def __init__(self, source: Source, per_request: int = 3, lose: list[bool] | None = None):
        super().__init__()
        self.source, self.per_request, self.lose = source, per_request, lose or []

    def connect(self, needed: Pair, wanted: Set[Pair]) -> FakeConn:
        self.attempts += 1
        conn = BatchConn(
            frozenset(wanted) | {needed},
            self.script,
            source=self.source,
            per_request=self.per_request,
            lose_flushes=self.lose,
        )
        self.opened.append(conn)
        return conn


def make(
    dest: FakeDestination, clock: Clock, *, pool_capacity: int | None = None, **options: object
) -> tuple[Transfer, list[FileOutcome]]:
    """A Transfer with the options given (``concurrency`` etc. go to Settings)."""
    got: list[FileOutcome] = []
    settings = {
        k: options.pop(k)
        for k in ("concurrency", "retries", "throttle_delay", "max_associations")
        if k in options
    }
    s = Settings("fake", retry_backoff=0.5, **settings)  # type: ignore[arg-type]
    pool = ConnectionPool(dest, capacity=pool_capacity or s.concurrency or 1, clock=clock)
    t = Transfer(
        s,
        pool,
        NullLimiter(),
        lambda j, o: got.append(o),
        sleep=clock.sleep,
        clock=clock,
        **options,  # type: ignore[arg-type]
    )
    return t, got


class Sleeps(Clock):
    """A clock that gives up when the transfer would wait for ever: asleep, or looking at
    the time in a loop that never sleeps."""

    def __init__(self) -> None:
        super().__init__()
        self.slept = 0
        self.read = 0

    def __call__(self) -> float:
        self.read += 1
        if self.read > 200_000:
            raise AssertionError("the transfer loops without waiting and never ends")
        return super().__call__()

    def sleep(self, seconds: float) -> None:
        self.slept += 1
        if self.slept > 10_000:
            raise AssertionError("the transfer waits and never ends")
        super().sleep(seconds)


# -- requests of several files ---------------------------------------------------------------


def test_files_join_one_request_up_to_its_room_and_each_request_is_sent_once() -> None:
    source = Source()
    dest = BatchDestination(source, per_request=3)
    t, got = make(dest, Sleeps(), concurrency=1)
    ended = t.run(jobs(source, 7))
    assert ended.error is None and not ended.left
    assert [o.state for o in got] == [State.STORED] * 7
    (conn,) = dest.opened
    assert isinstance(conn, BatchConn)
    assert [len(r) for r in conn.sent_requests] == [3, 3, 1]
    assert source.held == set()  # every payload let go once its request was sent


def test_a_request_lost_while_it_was_sent_sends_its_files_again_on_a_new_connection() -> None:
    source = Source()
    dest = BatchDestination(source, per_request=3, lose=[True])
    t, got = make(dest, Sleeps(), concurrency=1)
    ended = t.run(jobs(source, 3))
    assert ended.error is None and not ended.left
    assert [o.state for o in got] == [State.STORED] * 3
    assert all(o.attempts == 2 for o in got)
    lost, fresh = dest.opened  # the retries come back apart (jittered backoff)
    assert isinstance(fresh, BatchConn)
    assert sorted(uid for r in fresh.sent_requests for uid in r) == [
        "1.2.3.0",
        "1.2.3.1",
        "1.2.3.2",
    ]
    assert not lost.alive


def test_a_file_that_needs_a_fresh_connection_does_not_join_a_used_one() -> None:
    """After the PACS ended an association while a file was in flight, that file goes
    first on a fresh one, so that a second abort can be told to be its doing."""
    source = Source()
    dest = BatchDestination(source, per_request=5)
    t, got = make(dest, Sleeps(), concurrency=1)
    batch = jobs(source, 4)
    batch[2].needs_fresh = True
    t.run(batch)
    assert len(got) == 4
    first, second = dest.opened
    assert isinstance(first, BatchConn) and isinstance(second, BatchConn)
    assert first.sent_requests == [["1.2.3.0", "1.2.3.1"]]
    assert second.sent_requests == [["1.2.3.2", "1.2.3.3"]]


def test_a_lane_holds_only_the_payloads_of_its_request_on_the_wire() -> None:
    """DIMSE: one file per lane; once its request is sent, its payload is let go."""
    source = Source()
    dest = FakeDestination()
    t, got = make(dest, Sleeps(), concurrency=2)
    t.run(jobs(source, 20))
    assert len(got) == 20 and source.held == set()
    assert source.most_held <= 2


# -- the circuit breaker -------------------------------------------------------------------


def _open_breaker(clock: Clock) -> LocalBreaker:
    breaker = LocalBreaker(clock)
    for _ in range(THRESHOLD):
        breaker.failed("0xA700 Out of resources")
    assert breaker.state() is not None
    return breaker


def test_a_closed_breaker_lets_files_join_requests() -> None:
    source = Source()
    clock = Sleeps()
    dest = BatchDestination(source, per_request=3)
    t, _ = make(dest, clock, concurrency=1, breaker=LocalBreaker(clock))
    t.run(jobs(source, 6))
    (conn,) = dest.opened
    assert isinstance(conn, BatchConn) and [len(r) for r in conn.sent_requests] == [3, 3]


def test_an_open_breaker_stops_the_transfer_until_its_probe_is_due() -> None:
    clock = Sleeps()
    source = Source()
    dest = FakeDestination()
    t, got = make(dest, clock, concurrency=2, breaker=_open_breaker(clock))
    ended = t.run(jobs(source, 4))
    assert isinstance(ended.error, DestinationUnhealthy)
    assert "0xA700 Out of resources" in str(ended.error)
    assert got == [] and len(ended.left) == 4 and dest.attempts == 0


@pytest.mark.parametrize("batch", [False, True])
def test_the_probe_goes_alone_and_its_success_lets_the_rest_flow(batch: bool) -> None:
    clock = Sleeps()
    breaker = _open_breaker(clock)
    clock.now += 60  # the probe is due
    source = Source()
    starts: list[str] = []

    def script(conn: FakeConn, h: DicomHeader) -> int:
        starts.append(f"answer {h.sop_instance_uid}")
        return 0

    dest = BatchDestination(source, per_request=3) if batch else FakeDestination(script)
    t, got = make(
        dest,
        clock,
        concurrency=1 if batch else 3,
        breaker=breaker,
        on_start=lambda j: starts.append(f"start {j.header.sop_instance_uid if j.header else ''}"),
    )
    ended = t.run(jobs(source, 7))
    assert ended.error is None and [o.state for o in got] == [State.STORED] * 7
    assert breaker.state() is None  # closed by the probe's success
    if batch:
        conn = dest.opened[0]
        assert isinstance(conn, BatchConn) and [len(r) for r in conn.sent_requests] == [1, 3, 3]
    else:
        assert starts[:3] == ["start 1.2.3.0", "answer 1.2.3.0", "start 1.2.3.1"]


def test_transient_failures_in_a_row_open_the_breaker_and_stop_the_transfer() -> None:
    clock = Sleeps()
    breaker = LocalBreaker(clock)
    dest = FakeDestination(lambda c, h: 0xA700)
    t, got = make(dest, clock, concurrency=1, retries=50, breaker=breaker)
    ended = t.run(jobs(Source(), 3))
    assert isinstance(ended.error, DestinationUnhealthy) and breaker.state() is not None
    assert got == [] and len(ended.left) == 3


def test_a_failed_probe_waits_longer_for_the_next_and_stops_the_transfer() -> None:
    clock = Sleeps()
    breaker = _open_breaker(clock)
    clock.now += 60  # the probe is due
    dest = FakeDestination(lambda c, h: 0xA701)
    t, got = make(dest, clock, concurrency=2, retries=5, breaker=breaker)
    ended = t.run(jobs(Source(), 3))
    assert isinstance(ended.error, DestinationUnhealthy)
    assert f"probing every {2 * FIRST_PROBE:g} s" in str(ended.error)
    state = breaker.state()
    assert state is not None and state.interval == 2 * FIRST_PROBE
    assert len(dest.opened[0].sent) == 1 and got == [] and len(ended.left) == 3


def test_retries_back_off_exponentially_with_jitter() -> None:
    """retry_backoff 0.5 s: the n-th re-send waits 0.5 x 2^(n-1) s, +-50 % jitter."""
    clock = Sleeps()
    starts: list[float] = []
    dest = FakeDestination(lambda c, h: 0xA700)
    t, got = make(
        dest, clock, concurrency=1, retries=4, on_start=lambda j: starts.append(clock.now)
    )
    t.run(jobs(Source(), 1))
    assert got[0].attempts == 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for n, gap in enumerate(gaps, start=1):
        base = 0.5 * 2 ** (n - 1)
        assert 0.5 * base <= gap <= 1.5 * base, (n, gaps)


# -- stopping, lanes, the pool ------------------------------------------------------------


def test_a_stop_request_ends_the_transfer_and_returns_the_files_not_started() -> None:
    source = Source()
    t, got = make(FakeDestination(), Sleeps(), concurrency=1, stop=lambda: len(got) >= 3)
    ended = t.run(jobs(source, 10))
    assert ended.error is None
    assert len(got) == 3 and len(ended.left) == 7


def test_one_lane_means_one_association_at_a_time() -> None:
    source = Source()
    dest = FakeDestination()
    t, got = make(dest, Sleeps(), concurrency=1)
    t.run(jobs(source, 10))
    assert len(got) == 10 and len(dest.opened) == 1 and source.most_held == 1


def test_a_copy_identical_to_a_stored_one_is_skipped_as_a_duplicate() -> None:
    source = Source()
    dest = FakeDestination()
    t, got = make(dest, Sleeps(), concurrency=1, claims=MemoryClaims())
    t.run(jobs(source, 3, uid=lambda i: "9.9"))
    assert [o.state for o in got] == [State.STORED, State.SKIPPED, State.SKIPPED]
    assert len(dest.opened[0].sent) == 1


# -- what can go wrong before a file is on the wire ----------------------------------------


class Flaky(Source):
    """A source whose fetch of some items raises (once, or every time)."""

    def __init__(self, errors: dict[str, list[Exception]]) -> None:
        super().__init__()
        self.errors = errors

    @contextlib.contextmanager
    def fetch(self, item: SourceItem) -> Iterator[Payload]:
        if self.errors.get(item.uri):
            raise self.errors[item.uri].pop(0)
        with super().fetch(item) as payload:
            yield payload


def test_source_errors_fail_the_file_or_retry_it_without_blaming_the_destination() -> None:
    """Unreadable (SourceError): failed at once. A transient source error (S3 answering
    503): sent again later, and the destination's breaker does not count it."""
    clock = Sleeps()
    source = Flaky(
        {
            "mem://0": [SourceError("vanished before it could be read")],
            "mem://1": [TransientError("S3: 503 Slow Down"), TransientError("S3: 503 Slow Down")],
            "mem://2": [ConfigError("no credentials for the bucket")],
        }
    )
    breaker = LocalBreaker(clock)
    t, got = make(FakeDestination(), clock, concurrency=1, retries=3, breaker=breaker)
    for _ in range(THRESHOLD - 1):
        breaker.failed("0xA700")  # one more destination failure would open it
    ended = t.run(jobs(source, 4))
    assert ended.error is None and breaker.state() is None
    by = {o.uri: o for o in got}
    assert (by["mem://0"].state, by["mem://0"].reason) == (
        State.FAILED,
        "vanished before it could be read",
    )
    assert (by["mem://1"].state, by["mem://1"].attempts) == (State.STORED, 3)
    assert (by["mem://2"].state, by["mem://2"].attempts) == (State.FAILED, 1)
    assert "no credentials" in by["mem://2"].reason
    assert by["mem://3"].state is State.STORED


@dataclass(eq=False)
class StartConn(FakeConn):
    """``start`` answers from ``at_start``: an exception, a SendResult (nothing sent), or
    None (sent as usual)."""

    at_start: Callable[[DicomHeader], object] = lambda h: None

    def start(self, header: DicomHeader, payload: Payload) -> object:
        answer = self.at_start(header)
        if isinstance(answer, Exception):
            self.alive = False
            raise answer
        if answer is not None:
            return answer
        return super().start(header, payload)


class StartDestination(FakeDestination):
    def __init__(self, at_start: Callable[[DicomHeader], object]) -> None:
        super().__init__()
        self.at_start = at_start

    def connect(self, needed: Pair, wanted: Set[Pair]) -> FakeConn:
        self.attempts += 1
        conn = StartConn(frozenset(wanted) | {needed}, self.script, at_start=self.at_start)
        self.opened.append(conn)
        return conn


def test_what_start_answers_without_sending_settles_the_file_and_counts_no_attempt() -> None:
    """No presentation context for the file: refused before anything went on the wire,
    'not sent' (0 attempts); a conversion that failed for a retryable reason is retried."""
    lost_once = [AssociationLost("connection reset", by_peer=False)]

    def at_start(h: DicomHeader) -> object:
        uid = h.sop_instance_uid
        if uid == "1.2.3.0":
            return SendResult(st.Outcome.PERMANENT, None, "", False, "no presentation context")
        if uid == "1.2.3.1" and lost_once:
            return lost_once.pop()
        return None

    dest = StartDestination(at_start)
    t, got = make(dest, Sleeps(), concurrency=1, retries=2)
    ended = t.run(jobs(Source(), 3))
    assert ended.error is None
    by = {o.sop_instance_uid: o for o in got}
    assert (by["1.2.3.0"].state, by["1.2.3.0"].attempts) == (State.FAILED, 0)
    assert by["1.2.3.0"].reason == "no presentation context"
    assert (by["1.2.3.1"].state, by["1.2.3.1"].attempts) == (State.STORED, 2)
    assert by["1.2.3.2"].state is State.STORED and len(dest.opened) == 2


def test_a_sender_that_may_not_wait_leaves_a_backoff_to_its_caller() -> None:
    """run's inline sender: a connection that cannot be opened now would mean a wait;
    it stops with WouldWait and every file is left, none failed."""
    clock = Sleeps()
    dest = FakeDestination(refuse=lambda n: ConnectError("connection refused"))
    t, got = make(dest, clock, concurrency=1, retries=3, may_wait=False)
    ended = t.run(jobs(Source(), 3))
    assert isinstance(ended.error, WouldWait) and "connection refused" in str(ended.error)
    assert got == [] and len(ended.left) == 3 and dest.attempts == 1


def test_while_waiting_out_a_backoff_the_caller_is_ticked() -> None:
    """A batch writes the outcomes it holds on each tick (docs/reliability.md)."""
    clock = Sleeps()
    ticks: list[float] = []
    statuses = iter([0xA700, 0])
    dest = FakeDestination(lambda c, h: next(statuses))
    t, got = make(dest, clock, concurrency=1, tick=lambda: ticks.append(clock.now))
    t.run(jobs(Source(), 1))
    assert got[0].state is State.STORED and got[0].attempts == 2
    assert ticks, "no tick while the retry's backoff was waited out"


def test_a_file_the_transform_refuses_is_not_sent_and_counts_no_attempt() -> None:
    """--coerce's errors and --precheck's conflicts come from the transform, before the
    request: each file is settled failed or skipped with its reason, 0 attempts (the
    report's "Not sent", not "No response"), and nothing of it reaches the destination."""
    from migrator.coerce import CoercionError, CoercionSkipped
    from migrator.transfer.precheck import DestinationConflict

    refusals: dict[str, Exception] = {
        "1.2.3.0": CoercionError("PatientID (rule ids, line 3): too long for LO"),
        "1.2.3.1": CoercionSkipped("not sent: not in the table (missing: skip)"),
        "1.2.3.2": DestinationConflict("conflict: held under another study", skip=False),
        "1.2.3.3": DestinationConflict("conflict: held under another study", skip=True),
    }

    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        refusal = refusals.get(header.sop_instance_uid)
        if refusal is not None:
            raise refusal
        return header, payload

    dest = FakeDestination()
    t, got = make(dest, Sleeps(), concurrency=1, retries=2, transform=transform)
    ended = t.run(jobs(Source(), 5))
    assert ended.error is None
    by = {o.sop_instance_uid: (o.state, o.attempts) for o in got}
    assert by == {
        "1.2.3.0": (State.FAILED, 0),
        "1.2.3.1": (State.SKIPPED, 0),
        "1.2.3.2": (State.FAILED, 0),
        "1.2.3.3": (State.SKIPPED, 0),
        "1.2.3.4": (State.STORED, 1),
    }
    assert [uid for conn in dest.opened for uid in conn.sent] == ["1.2.3.4"]
