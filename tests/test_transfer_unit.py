"""The transfer core without a network: the connection pool on a controllable clock, and the
per-file policy against scripted connections. (Real peers: test_transfer_behaviour.py.)"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from migrator import status as st
from migrator.dicomfile import DicomHeader
from migrator.errors import AssociationLost, AssociationRejected, ConnectError, WouldWait
from migrator.limits.rate import NullLimiter
from migrator.outcomes import FileOutcome, State
from migrator.settings import Settings
from migrator.sources.base import Payload, SourceItem
from migrator.transfer.claims import MemoryClaims
from migrator.transfer.destination import Pair, SendResult
from migrator.transfer.job import Job
from migrator.transfer.policy import ABORTED_TWICE, Transfer
from migrator.transfer.pool import IDLE_REOPEN, LEASE_REFRESH, ConnectionPool

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass(eq=False)
class FakeConn:
    pairs: frozenset[Pair]
    script: Callable[[FakeConn, DicomHeader], int | Exception]
    capacity: int = 1
    requests: int = 0
    alive: bool = True
    released: bool = False
    sent: list[str] = field(default_factory=list)

    def covers(self, pair: Pair) -> bool:
        return pair in self.pairs

    def start(self, header: DicomHeader, payload: Payload) -> object:
        self.requests += 1
        return header

    def finish(self, pending: object) -> SendResult:
        assert isinstance(pending, DicomHeader)
        answer = self.script(self, pending)
        if isinstance(answer, Exception):
            self.alive = False
            raise answer
        self.sent.append(pending.sop_instance_uid)
        return SendResult(st.classify(answer), answer, pending.transfer_syntax, False)

    def room(self, size: int) -> bool:
        return False  # one request in flight, as DIMSE

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def buffered(self) -> bool:
        return True

    def deadline(self, pending: object) -> float:
        return 0.0

    def release(self) -> None:
        self.alive, self.released = False, True

    def abort(self) -> None:
        self.alive = False


class FakeDestination:
    key = "fake:1:PACS"
    name = "fake:1 (PACS)"

    def __init__(
        self,
        script: Callable[[FakeConn, DicomHeader], int | Exception] = lambda c, h: 0,
        refuse: Callable[[int], Exception | None] = lambda n: None,
    ) -> None:
        self.script = script
        self.refuse = refuse
        self.opened: list[FakeConn] = []
        self.attempts = 0

    def connect(self, needed: Pair, wanted: Set[Pair]) -> FakeConn:
        self.attempts += 1
        error = self.refuse(self.attempts)
        if error is not None:
            raise error
        conn = FakeConn(frozenset(wanted) | {needed}, self.script)
        self.opened.append(conn)
        return conn


class MemSource:
    @contextlib.contextmanager
    def fetch(self, item: SourceItem) -> Iterator[Payload]:
        yield Payload(data=b"")

    def iter_items(self) -> Iterator[SourceItem]:
        return iter(())


def job(n: int, *, ts: str = EXPLICIT, uid: str | None = None, sop: str = CT) -> Job:
    header = DicomHeader(sop, uid or f"1.2.3.{n}", ts, "1.2", "1.3", 0, 100, False)
    return Job(SourceItem(f"mem://{n}", 100), MemSource(), header)


def transfer(
    dest: FakeDestination, clock: Clock, **settings: object
) -> tuple[Transfer, list[FileOutcome]]:
    got: list[FileOutcome] = []
    s = Settings("fake", retry_backoff=0.5, **settings)  # type: ignore[arg-type]
    pool = ConnectionPool(dest, capacity=s.concurrency, clock=clock)
    t = Transfer(
        s,
        pool,
        NullLimiter(),
        lambda j, o: got.append(o),
        claims=MemoryClaims(),
        sleep=clock.sleep,
        clock=clock,
    )
    return t, got


# -- the pool ----------------------------------------------------------------------------


class Lease:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.refreshed = 0
        self.released = False

    def refresh(self) -> bool:
        self.refreshed += 1
        return self.ok

    def release(self) -> None:
        self.released = True


def test_pool_reuses_a_connection_that_covers_the_pair_and_opens_one_for_a_new_pair() -> None:
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=2, clock=clock)
    a = pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)})
    pool.checkin(a)
    assert pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)}) is a
    pool.checkin(a)
    b = pool.checkout((CT, "1.2.840.10008.1.2"), {(CT, "1.2.840.10008.1.2")})
    assert b is not a and len(dest.opened) == 2


def test_pool_reopens_a_connection_idle_longer_than_the_pacs_keeps_it() -> None:
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, clock=clock)
    a = pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)})
    pool.checkin(a)
    clock.now += IDLE_REOPEN + 1
    b = pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)})
    assert b is not a and a.released and len(pool) == 1


def test_pool_refreshes_its_slot_lease_and_reopens_when_the_lease_was_lost() -> None:
    clock, dest = Clock(), FakeDestination()
    leases: list[Lease] = []

    def provide(wait: bool) -> Lease:
        leases.append(Lease(ok=len(leases) > 0))  # the first lease will be found lost
        return leases[-1]

    pool = ConnectionPool(dest, clock=clock, lease_provider=provide)
    a = pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)})
    pool.checkin(a)
    clock.now += LEASE_REFRESH / 2
    assert pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)}) is a  # not due: no round trip
    assert leases[0].refreshed == 0
    pool.checkin(a)
    clock.now += LEASE_REFRESH + 1
    b = pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)})
    assert leases[0].refreshed == 1 and leases[0].released and a.released
    assert b is not a and len(leases) == 2 and not leases[1].released


def test_pool_keeps_within_capacity_by_closing_the_oldest_idle_connection() -> None:
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=1, clock=clock)
    a = pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)})
    pool.checkin(a)
    b = pool.checkout((CT, "x"), {(CT, "x")})
    assert a.released and len(pool) == 1 and b is not a


P = (CT, EXPLICIT)


def test_pool_hands_out_the_most_recently_used_idle_connection() -> None:
    """Of two idle connections for the pair, the one used last (so the other can age out
    and be closed); neither is handed out twice while in use."""
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=2, clock=clock)
    a = pool.checkout(P, {P})
    b = pool.checkout(P, {P})
    assert b is not a and len(dest.opened) == 2  # a is in use: not handed out again
    pool.checkin(a)
    clock.now += 1
    pool.checkin(b)
    assert pool.checkout(P, {P}) is b
    assert pool.checkout(P, {P}) is a
    assert len(dest.opened) == 2


def test_pool_opens_beyond_capacity_only_when_every_connection_is_in_use() -> None:
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=1, clock=clock)
    a = pool.checkout(P, {P})
    b = pool.checkout(P, {P})  # nothing idle to close: a second one
    assert b is not a and len(pool) == 2 and not a.released


def test_pool_drops_a_dead_idle_connection_and_keeps_the_others() -> None:
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=3, clock=clock)
    a = pool.checkout(P, {P})
    b = pool.checkout(P, {P})
    pool.checkin(a)
    clock.now += 1
    pool.checkin(b)
    b.alive = False  # the PACS closed it while idle
    assert pool.checkout(P, {P}) is a
    assert len(pool) == 1 and not b.released  # aborted, not released: it was dead


def test_pool_closes_an_idle_connection_past_idle_reopen_even_below_capacity() -> None:
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=3, clock=clock)
    a = pool.checkout(P, {P})
    pool.checkin(a)
    clock.now += IDLE_REOPEN + 1
    b = pool.checkout(P, {P})
    assert b is not a and a.released and len(pool) == 1


def test_pool_after_a_lost_lease_uses_another_idle_connection_and_frees_the_lost_one() -> None:
    clock, dest = Clock(), FakeDestination()
    leases: list[Lease] = []

    def provide(wait: bool) -> Lease:
        leases.append(Lease(ok=len(leases) != 1))  # the second lease is lost
        return leases[-1]

    pool = ConnectionPool(dest, capacity=3, clock=clock, lease_provider=provide)
    a = pool.checkout(P, {P})
    b = pool.checkout(P, {P})
    pool.checkin(a)
    clock.now += 1
    pool.checkin(b)  # b: used last, tried first; its lease (the second) is lost
    clock.now += LEASE_REFRESH + 1
    assert pool.checkout(P, {P}) is a
    assert b.released and leases[1].released and len(pool) == 1
    assert len(dest.opened) == 2 and len(leases) == 2


def test_pool_fresh_skips_used_connections_for_an_unused_one() -> None:
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=3, clock=clock)
    unused = pool.checkout(P, {P})
    used = pool.checkout(P, {P})
    used.requests = 2
    pool.checkin(unused)
    clock.now += 1
    pool.checkin(used)  # used last: looked at first
    assert pool.checkout(P, {P}, fresh=True) is unused
    assert len(dest.opened) == 2 and pool.opened == 2


def test_pool_hands_out_a_fresh_connection_when_asked() -> None:
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=2, clock=clock)
    a = pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)})
    a.requests = 3
    pool.checkin(a)
    assert pool.checkout((CT, EXPLICIT), {(CT, EXPLICIT)}, fresh=True) is not a


# -- the policy ----------------------------------------------------------------------------


def test_a_file_the_pacs_aborts_on_twice_fails_and_the_others_are_stored() -> None:
    def script(conn: FakeConn, h: DicomHeader) -> int | Exception:
        if h.sop_instance_uid == "1.2.3.5":
            return AssociationLost("A-ABORT", by_peer=True)
        return 0

    clock, dest = Clock(), FakeDestination(script)
    t, got = transfer(dest, clock, concurrency=2)
    ended = t.run([job(n) for n in range(10)])
    assert not ended.left and ended.error is None
    failed = [o for o in got if o.state is State.FAILED]
    assert len(failed) == 1 and ABORTED_TWICE in failed[0].reason
    assert sum(o.state is State.STORED for o in got) == 9
    assert clock.now - 1000 < 5  # backoffs only: ~0.5 s + ~1 s


class Interrupted(Exception):
    """Stands for a time limit or an interrupt raised while files are in flight."""


def test_an_exception_ending_the_transfer_aborts_what_is_in_flight_and_keeps_the_rest() -> None:
    """Two lanes; the first outcome's sink raises while the second file is on the wire: its
    outcome is unknown, so its association is aborted and forgotten; the association whose
    answer was read goes back to the pool. Neither file's outcome is recorded: both stay
    unsettled, named for the next delivery to look up at the destination."""
    clock, dest = Clock(), FakeDestination()
    pool = ConnectionPool(dest, capacity=2, clock=clock)
    got: list[FileOutcome] = []

    def record(j: Job, o: FileOutcome) -> None:
        got.append(o)
        raise Interrupted

    s = Settings("fake", retry_backoff=0.5, concurrency=2)
    t = Transfer(s, pool, NullLimiter(), record, sleep=clock.sleep, clock=clock)
    with pytest.raises(Interrupted):
        t.run([job(1), job(2)])
    assert len(got) == 1 and len(dest.opened) == 2
    done, in_flight = sorted(dest.opened, key=lambda c: len(c.sent), reverse=True)
    assert len(done.sent) == 1 and in_flight.sent == [] and in_flight.requests == 1
    assert not in_flight.alive and not in_flight.released  # aborted
    assert done.alive and len(pool) == 1
    assert pool.checkout(P, {P}) is done  # checked in: free for the next file
    assert sorted(j.item.uri for j in t.unanswered) == [job(1).item.uri, job(2).item.uri]


def test_a_pacs_that_aborts_every_association_after_n_stores_costs_no_file() -> None:
    def script(conn: FakeConn, h: DicomHeader) -> int | Exception:
        if conn.requests > 2:
            return AssociationLost("A-ABORT", by_peer=True)
        return 0

    clock, dest = Clock(), FakeDestination(script)
    t, got = transfer(dest, clock, concurrency=3)
    t.run([job(n) for n in range(30)])
    assert [o.state for o in got] == [State.STORED] * 30


def test_out_of_resources_is_retried_on_a_fresh_association_then_fails_with_its_status() -> None:
    clock, dest = Clock(), FakeDestination(lambda c, h: 0xA700)
    t, got = transfer(dest, clock, retries=2)
    t.run([job(1)])
    assert got[0].state is State.FAILED and got[0].status == 0xA700
    assert got[0].attempts == 3 and "gave up after 3 attempts" in got[0].reason
    assert len(dest.opened) == 3 and all(c.released for c in dest.opened)


def test_warnings_are_stored_and_other_failures_are_not_retried() -> None:
    statuses = {"1.2.3.1": 0xB000, "1.2.3.2": 0xC000, "1.2.3.3": 0x0122}
    clock, dest = Clock(), FakeDestination(lambda c, h: statuses[h.sop_instance_uid])
    t, got = transfer(dest, clock)
    t.run([job(n) for n in (1, 2, 3)])
    by = {o.sop_instance_uid: o for o in got}
    assert by["1.2.3.1"].state is State.STORED and by["1.2.3.1"].warning
    assert by["1.2.3.2"].state is State.FAILED and by["1.2.3.2"].attempts == 1
    assert by["1.2.3.3"].state is State.FAILED and by["1.2.3.3"].attempts == 1


def test_an_unreachable_destination_stops_the_transfer_without_spending_file_attempts() -> None:
    clock = Clock()
    dest = FakeDestination(refuse=lambda n: ConnectError("refused"))
    t, got = transfer(dest, clock, retries=2)
    ended = t.run([job(n) for n in range(5)])
    assert got == [] and len(ended.left) == 5 and all(j.attempts == 0 for j in ended.left)
    assert dest.attempts == 3 and "refused" in str(ended.error)


def test_a_permanent_rejection_stops_at_once() -> None:
    clock = Clock()
    reject = AssociationRejected("wrong AE", result=1, source=1, reason=7)
    dest = FakeDestination(refuse=lambda n: reject)
    t, _ = transfer(dest, clock)
    ended = t.run([job(1), job(2)])
    assert ended.error is reject and len(ended.left) == 2 and dest.attempts == 1


def test_associations_the_pacs_refuses_beyond_its_limit_only_shrink_the_lanes() -> None:
    clock = Clock()
    busy = AssociationRejected("busy", result=2, source=3, reason=2)
    dest = FakeDestination(refuse=lambda n: busy if n > 2 else None)
    t, got = transfer(dest, clock, concurrency=4)
    ended = t.run([job(n) for n in range(20)])
    assert ended.error is None and len(got) == 20
    assert all(o.state is State.STORED for o in got) and len(dest.opened) == 2


def test_a_sender_that_may_not_wait_stops_at_the_first_retry() -> None:
    clock, dest = (
        Clock(),
        FakeDestination(lambda c, h: 0xA700 if h.sop_instance_uid == "1.2.3.1" else 0),
    )
    got: list[FileOutcome] = []
    s = Settings("fake")
    t = Transfer(
        s,
        ConnectionPool(dest, clock=clock),
        NullLimiter(),
        lambda j, o: got.append(o),
        may_wait=False,
        sleep=clock.sleep,
        clock=clock,
    )
    ended = t.run([job(0), job(1), job(2)])
    assert isinstance(ended.error, WouldWait)
    assert [o.sop_instance_uid for o in got] == ["1.2.3.0"]
    assert {j.header.sop_instance_uid for j in ended.left if j.header} == {"1.2.3.1", "1.2.3.2"}


def test_a_later_copy_is_sent_when_the_first_copy_fails_and_compared_when_it_is_stored(
    tmp_path: Path,
) -> None:
    clock = Clock()
    statuses = iter([0xC000, 0])  # the first copy refused, the second stored

    dest = FakeDestination(lambda c, h: next(statuses))
    t, got = transfer(dest, clock)
    t.run([job(1, uid="9.9"), job(2, uid="9.9")])
    assert [(o.uri, o.state) for o in got] == [
        ("mem://1", State.FAILED),
        ("mem://2", State.STORED),
    ]
    assert not any("conflict" in o.reason for o in got)


@pytest.mark.parametrize("lanes", [1, 3])
def test_files_of_several_association_profiles_each_go_on_an_association_that_covers_them(
    lanes: int,
) -> None:
    clock, dest = Clock(), FakeDestination()
    t, got = transfer(dest, clock, concurrency=lanes)
    jobs = [job(n, sop=f"1.2.826.0.1.3680043.8.498.{n % 140}") for n in range(280)]
    t.run(jobs)
    assert len(got) == 280 and all(o.state is State.STORED for o in got)
    for conn in dest.opened:
        assert all(sop_in(conn, uid) for uid in conn.sent)


def sop_in(conn: FakeConn, uid: str) -> bool:
    n = int(uid.rsplit(".", 1)[1])
    return (f"1.2.826.0.1.3680043.8.498.{n % 140}", EXPLICIT) in conn.pairs


class BytesSource(MemSource):
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    @contextlib.contextmanager
    def fetch(self, item: SourceItem) -> Iterator[Payload]:
        yield Payload(data=self.files[item.uri])


def test_files_planned_without_their_header_are_read_first_and_refused_or_sent() -> None:
    """A manifest plans files unread: the transfer reads each header before sending it;
    what is not DICOM is skipped there, without an attempt."""
    from tests.test_inspect_fast import SOP, meta, uids

    source = BytesSource({"mem://dcm": meta() + uids(), "mem://txt": b"not a DICOM file\n" * 9})
    clock, dest = Clock(), FakeDestination()
    t, got = transfer(dest, clock)
    t.run([Job(SourceItem(uri, 100), source, None) for uri in ("mem://txt", "mem://dcm")])
    by = {o.uri: o for o in got}
    assert (by["mem://dcm"].state, by["mem://dcm"].sop_instance_uid) == (State.STORED, SOP)
    assert by["mem://txt"].state is State.SKIPPED and by["mem://txt"].attempts == 0
    assert "not a DICOM file" in by["mem://txt"].reason and dest.opened[0].sent == [SOP]
