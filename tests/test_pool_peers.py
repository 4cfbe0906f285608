"""The connection pool against real peers, on a controllable clock (issue 23).

The pool's decisions (reuse, reopen after ``IDLE_REOPEN``, refresh the fleet-wide lease
every ``LEASE_REFRESH``) follow its own clock, which the tests move; everything else is
real: associations to an in-process pynetdicom Storage SCP that counts them (what the PACS
sees), C-STOREs of real files on them, and the leases in a real redis-server
(``AssociationSlots`` with the same ``_SlotLease`` adapter the workers use), whose expiry
follows Redis's own clock. (test_transfer_unit.py covers the same logic with fakes.)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from migrator import synth
from migrator.dicomfile import DicomHeader, inspect_file
from migrator.keys import slots_key
from migrator.limits.slots import AssociationSlots
from migrator.settings import Settings
from migrator.sources.base import Payload
from migrator.transfer.destination import Connection
from migrator.transfer.dimse import DimseDestination
from migrator.transfer.pool import IDLE_REOPEN, LEASE_REFRESH, ConnectionPool, Lease
from migrator.transfer.runtime import _SlotLease
from tests.peers.counting_scp import CountingScp, counting_scp
from tests.peers.redis import RedisPeer, redis_peer

pytestmark = pytest.mark.timeout(60)


class Clock:
    """The pool's clock: moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisPeer]:
    with redis_peer(tmp_path_factory.mktemp("redis")) as peer:
        yield peer


@pytest.fixture
def scp() -> Iterator[CountingScp]:
    with counting_scp() as peer:
        yield peer


@dataclass(frozen=True)
class File:
    path: Path
    header: DicomHeader


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[File]:
    paths = synth.write_corpus(tmp_path_factory.mktemp("pool-corpus"), count=4, seed=23)
    return [File(p, inspect_file(str(p))) for p in paths]


def _pair(f: File) -> tuple[str, str]:
    return (f.header.sop_class_uid, f.header.transfer_syntax)


def _send(conn: Connection, f: File) -> int | None:
    result = conn.finish(conn.start(f.header, Payload(path=str(f.path))))
    return result.status


def _wait_for(check: object, timeout: float = 10.0) -> None:
    """Until ``check()`` is true: the receiver learns of a close a moment after we do
    (generous: a loaded 2-core machine may take a second to schedule its thread)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _pool(
    scp: CountingScp,
    clock: Clock,
    *,
    slots: AssociationSlots | None = None,
    later: AssociationSlots | None = None,
) -> ConnectionPool:
    """A pool whose leases come from ``slots`` (the first) and ``later`` (the next ones,
    when given: same key and limit, another lease length)."""
    settings = Settings("127.0.0.1", scp.port, called_ae=scp.ae_title, acse_timeout=10)
    given: list[str] = []

    def provide(wait: bool) -> Lease:
        assert slots is not None
        source = later if later is not None and given else slots
        given.append(source.acquire(timeout=10.0 if wait else 0.0))
        return _SlotLease(source, given[-1])

    return ConnectionPool(
        DimseDestination(settings), clock=clock, lease_provider=provide if slots else None
    )


def _slots(peer: RedisPeer, lease_seconds: float) -> AssociationSlots:
    key = slots_key(f"pool-{uuid.uuid4().hex[:8]}:104:COUNTING")
    return AssociationSlots(peer.client(), key, 1, lease_seconds=lease_seconds)


def test_one_association_carries_every_file_of_its_pair(
    scp: CountingScp, files: list[File]
) -> None:
    """Files of one (SOP class, syntax) go on one association, batch after batch: the PACS
    sees one association and every instance once."""
    clock = Clock()
    pool = _pool(scp, clock)
    for h in files:
        conn = pool.checkout(_pair(h), {_pair(h)})
        assert _send(conn, h) == 0x0000
        pool.checkin(conn)
        clock.now += IDLE_REOPEN / 2  # used again before it would count as idle
    pool.close_all()
    _wait_for(lambda: scp.open_now == 0)
    assert scp.associations == 1 and pool.opened == 1
    assert dict(scp.stores) == {f.header.sop_instance_uid: 1 for f in files}


def test_an_association_idle_too_long_is_released_and_a_new_one_opened(
    scp: CountingScp, files: list[File]
) -> None:
    """Idle longer than the PACS keeps it (``IDLE_REOPEN``): released in good order (the
    PACS sees it close, not a failed store) and the next file goes on a new one."""
    clock = Clock()
    pool = _pool(scp, clock)
    first = pool.checkout(_pair(files[0]), {_pair(files[0])})
    assert _send(first, files[0]) == 0x0000
    pool.checkin(first)
    clock.now += IDLE_REOPEN + 0.5
    second = pool.checkout(_pair(files[1]), {_pair(files[1])})
    assert second is not first and not first.alive
    assert _send(second, files[1]) == 0x0000
    _wait_for(lambda: scp.open_now == 1)  # the first closed, the second open
    assert scp.associations == 2 and len(pool) == 1
    pool.close_all()
    assert scp.total == 2


def test_a_lease_in_use_is_refreshed_so_the_fleet_cap_keeps_counting_it(
    shared_redis: RedisPeer, scp: CountingScp, files: list[File]
) -> None:
    """Lease of 3 s (Redis's clock); the association is used for 4.5 s of real time with
    the pool's clock past ``LEASE_REFRESH`` at each use: the lease is refreshed, so the slot
    stays taken and another worker (limit 1) cannot open a second association. (1.5 s
    between refreshes leaves 1.5 s for a loaded machine to answer.)"""
    slots = _slots(shared_redis, lease_seconds=3.0)
    other = AssociationSlots(shared_redis.client(), slots.key, 1, lease_seconds=30.0)
    clock = Clock()
    pool = _pool(scp, clock, slots=slots)
    conn = pool.checkout(_pair(files[0]), {_pair(files[0])})
    pool.checkin(conn)
    for h in files[1:]:
        time.sleep(1.5)  # real time: half of the lease
        clock.now += LEASE_REFRESH + 0.5
        again = pool.checkout(_pair(h), {_pair(h)})
        assert again is conn, "a refreshed lease keeps its association"
        assert _send(again, h) == 0x0000
        pool.checkin(again)
        assert slots.held() == 1
        assert other.try_acquire() is None, "the cap of 1 must still count our association"
    pool.close_all()
    assert slots.held() == 0  # released at close, not left to expire
    assert scp.associations == 1


def test_a_lost_lease_closes_its_association_before_another_is_opened(
    shared_redis: RedisPeer, scp: CountingScp, files: list[File]
) -> None:
    """The lease expired during a long pause (no refresh for longer than the lease) and
    another worker took the slot: the pool must not reuse the association (the fleet
    would exceed its cap). It closes it, waits for a slot (the other worker gives it back
    after 0.5 s) and opens a new one; the PACS never sees two of ours at once. (The new
    lease is a long one, so that a loaded machine cannot lose it too before the check.)"""
    slots = _slots(shared_redis, lease_seconds=0.3)
    other = AssociationSlots(shared_redis.client(), slots.key, 1, lease_seconds=30.0)
    clock = Clock()
    pool = _pool(scp, clock, slots=slots, later=other)
    first = pool.checkout(_pair(files[0]), {_pair(files[0])})
    assert _send(first, files[0]) == 0x0000
    pool.checkin(first)
    time.sleep(0.6)  # the lease (0.3 s) has expired in Redis
    token = other.try_acquire()
    assert token is not None, "an expired lease frees its slot for the fleet"
    timer = threading.Timer(0.5, other.release, args=(token,))
    timer.start()
    try:
        clock.now += LEASE_REFRESH + 0.5
        second = pool.checkout(_pair(files[1]), {_pair(files[1])})
    finally:
        timer.join()
    assert second is not first and not first.alive
    assert _send(second, files[1]) == 0x0000
    assert slots.held() == 1
    pool.close_all()
    _wait_for(lambda: scp.open_now == 0)
    assert scp.associations == 2 and scp.max_open == 1
    assert scp.total == 2


def test_an_unexpired_lease_is_not_asked_again_before_lease_refresh(
    shared_redis: RedisPeer, scp: CountingScp, files: list[File]
) -> None:
    """Within ``LEASE_REFRESH`` of the pool's clock the lease is not refreshed (no round
    trip per file): a lease of 0.3 s then expires in Redis although the association is in
    use, which shows that nothing refreshed it."""
    slots = _slots(shared_redis, lease_seconds=0.3)
    clock = Clock()
    pool = _pool(scp, clock, slots=slots)
    conn = pool.checkout(_pair(files[0]), {_pair(files[0])})
    pool.checkin(conn)
    time.sleep(0.6)
    clock.now += LEASE_REFRESH - 0.5
    assert pool.checkout(_pair(files[1]), {_pair(files[1])}) is conn
    assert slots.held() == 0
    pool.close_all()


def test_two_threads_closing_the_pool_at_once_release_each_association_once(
    scp: CountingScp, files: list[File], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run`'s idle closer and its end may close the pool at the same time. Under stress-ng
    the second one joined a release thread the first had made and not started yet
    ("cannot join thread before it is started", a traceback in `run`'s output): here a
    release thread starts 0.3 s after it is made, as on a loaded machine."""
    pool = _pool(scp, Clock())
    pair = _pair(files[0])
    conns = [pool.checkout(pair, {pair}) for _ in range(3)]
    for conn in conns:
        pool.checkin(conn)
    _wait_for(lambda: scp.open_now == 3)
    real_start = threading.Thread.start

    def late_start(self: threading.Thread) -> None:
        if self.name == "migrator-release":
            time.sleep(0.3)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", late_start)
    errors: list[BaseException] = []

    def close() -> None:
        try:
            pool.close_all()
        except BaseException as exc:  # the test reports it
            errors.append(exc)

    first = threading.Thread(target=close)
    first.start()
    time.sleep(0.1)  # the first is starting its release threads
    close()
    first.join()
    assert errors == []
    _wait_for(lambda: scp.open_now == 0)
    assert scp.associations == 3 and pool.opened == 3  # each released once, none reopened
