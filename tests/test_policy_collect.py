"""Waiting for answers: the per-file policy reads whichever lane the destination answers
first (``select`` on real sockets), gives up on an answer at its deadline, and ticks its
caller while it waits. Connections here are socket pairs whose far end answers after a
scripted delay, on the real clock (sub-second); the answers themselves through real peers:
test_transfer_behaviour.py. Written for the mutation survivors of
migrator/transfer/policy.py (docs/testing.md)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Set
from dataclasses import dataclass, field

from migrator import status as st
from migrator.dicomfile import DicomHeader
from migrator.errors import AssociationLost
from migrator.limits.rate import NullLimiter
from migrator.outcomes import FileOutcome, State
from migrator.settings import Settings
from migrator.sources.base import Payload
from migrator.transfer.destination import Pair, SendResult
from migrator.transfer.policy import TICK, Transfer
from migrator.transfer.pool import ConnectionPool
from tests.test_policy_unit import Source, jobs
from tests.test_transfer_unit import FakeConn, FakeDestination

#: Seconds a request may wait for its answer (the association's DIMSE timeout)
DEADLINE = 0.4
#: An answer "that never comes" comes this late, so that a transfer that waits for it
#: anyway ends (and its test fails on the time taken) instead of hanging
LATE = 2.5


@dataclass(eq=False)
class SocketConn(FakeConn):
    """The far end of a socket pair answers each request after ``delays[uid]`` seconds
    (None: after LATE, past the deadline); the request's deadline is ``deadlines[uid]``
    seconds after it was sent (DEADLINE by default)."""

    delays: dict[str, float | None] = field(default_factory=dict)
    deadlines: dict[str, float] = field(default_factory=dict)
    mine: socket.socket | None = None
    peer: socket.socket | None = None
    started: dict[str, float] = field(default_factory=dict)
    timers: list[threading.Timer] = field(default_factory=list)
    closed_at: float = 0.0

    def __post_init__(self) -> None:
        self.mine, self.peer = socket.socketpair()

    def start(self, header: DicomHeader, payload: Payload) -> object:
        self.requests += 1
        uid = header.sop_instance_uid
        delay = self.delays.get(uid, 0.0)
        self.started[uid] = time.monotonic()
        timer = threading.Timer(LATE if delay is None else delay, self._answer)
        timer.daemon = True
        timer.start()
        self.timers.append(timer)
        return header

    def _answer(self) -> None:
        assert self.peer is not None
        with contextlib.suppress(OSError):  # closed: the transfer gave up on this connection
            self.peer.send(b"x")

    def fileno(self) -> int:
        assert self.mine is not None
        return self.mine.fileno()

    def buffered(self) -> bool:
        return False

    def deadline(self, pending: object) -> float:
        assert isinstance(pending, DicomHeader)
        uid = pending.sop_instance_uid
        return self.started[uid] + self.deadlines.get(uid, DEADLINE)

    def finish(self, pending: object) -> SendResult:
        assert isinstance(pending, DicomHeader) and self.mine is not None
        self.mine.settimeout(0)
        try:
            self.mine.recv(1)
        except BlockingIOError:
            self.alive = False
            raise AssociationLost("no answer before the deadline") from None
        self.sent.append(pending.sop_instance_uid)
        return SendResult(st.Outcome.STORED, 0, pending.transfer_syntax, False)

    def release(self) -> None:
        self.abort()
        self.released = True

    def abort(self) -> None:
        self.alive = False
        self.closed_at = self.closed_at or time.monotonic()
        for timer in self.timers:
            timer.cancel()
        for s in (self.mine, self.peer):
            if s is not None:
                s.close()


class SocketDestination(FakeDestination):
    """The n-th connection answers after ``delays(n)`` (and ``deadlines(n)``)."""

    def __init__(
        self,
        delays: Callable[[int], dict[str, float | None]],
        deadlines: Callable[[int], dict[str, float]] = lambda n: {},
    ) -> None:
        super().__init__()
        self.delays, self.deadlines = delays, deadlines

    def connect(self, needed: Pair, wanted: Set[Pair]) -> FakeConn:
        self.attempts += 1
        n = self.attempts
        conn = SocketConn(
            frozenset(wanted) | {needed},
            self.script,
            delays=self.delays(n),
            deadlines=self.deadlines(n),
        )
        self.opened.append(conn)
        return conn


def run(
    dest: SocketDestination, n: int, *, lanes: int, tick: Callable[[], None] | None = None
) -> tuple[list[tuple[float, FileOutcome]], float]:
    """Send ``n`` files; each outcome with the seconds since the start it came at."""
    got: list[tuple[float, FileOutcome]] = []
    t0 = time.monotonic()
    s = Settings("fake", retry_backoff=0.01, retries=1, concurrency=lanes)
    t = Transfer(
        s,
        ConnectionPool(dest, capacity=lanes),
        NullLimiter(),
        lambda j, o: got.append((time.monotonic() - t0, o)),
        tick=tick,
    )
    try:
        ended = t.run(jobs(Source(), n))
    finally:
        for conn in dest.opened:
            conn.abort()
    assert ended.error is None and not ended.left
    return got, time.monotonic() - t0


def test_answers_are_settled_in_the_order_they_come_not_the_order_sent() -> None:
    dest = SocketDestination(lambda n: {"1.2.3.0": 0.3, "1.2.3.1": 0.05})
    got, _ = run(dest, 2, lanes=2)
    assert [o.sop_instance_uid for _, o in got] == ["1.2.3.1", "1.2.3.0"]
    assert all(o.state is State.STORED and o.attempts == 1 for _, o in got)


def test_an_answer_that_does_not_come_by_its_deadline_is_given_up_and_the_file_resent() -> None:
    """Association 1 never answers file 0 (deadline 0.4 s); association 2 answers file 1
    after 1.2 s (deadline 5 s). Association 1 is given up once file 0's deadline passed,
    not when the other answer (or the late one) comes; file 0 goes again on another."""
    dest = SocketDestination(
        lambda n: {"1.2.3.0": None, "1.2.3.1": 1.2} if n <= 2 else {},  # the 3rd answers
        lambda n: {"1.2.3.0": DEADLINE, "1.2.3.1": 5.0},
    )
    t0 = time.monotonic()
    got, took = run(dest, 2, lanes=2)
    by = {o.sop_instance_uid: o for _, o in got}
    assert by["1.2.3.0"].state is State.STORED and by["1.2.3.0"].attempts == 2
    assert by["1.2.3.1"].attempts == 1
    silent = dest.opened[0]
    assert isinstance(silent, SocketConn) and silent.sent == []
    assert DEADLINE <= silent.closed_at - t0 < 1.0  # given up at its deadline
    assert took < LATE


def test_the_caller_is_ticked_while_an_answer_is_awaited() -> None:
    """A batch writes its outcomes on each tick: at least every TICK seconds."""
    ticks: list[float] = []
    dest = SocketDestination(lambda n: {"1.2.3.0": 0.35})
    got, _ = run(dest, 1, lanes=1, tick=lambda: ticks.append(time.monotonic()))
    assert got[0][1].state is State.STORED
    assert len(ticks) >= 0.35 // TICK + 1, ticks


def test_idle_lanes_go_on_while_another_waits_for_a_slow_answer() -> None:
    """File 0's answer takes 0.5 s (within its deadline); the other lane sends files 1-4
    meanwhile."""
    dest = SocketDestination(lambda n: {"1.2.3.0": 0.5}, lambda n: {"1.2.3.0": 5.0})
    got, _ = run(dest, 5, lanes=2)
    assert [o.sop_instance_uid for _, o in got][-1] == "1.2.3.0", got
    assert all(o.attempts == 1 for _, o in got)
