"""How the per-file policy settles an answer: who hears of it (the breaker, -j auto's
controller, the observer, the file log), when a file is sent again (Retry-After, the
throttle, aborts that are the file's doing), and how a stop is worded. Scripted
connections on a controllable clock, as in test_policy_unit.py; written for the mutation
survivors of migrator/transfer/policy.py (docs/testing.md)."""

from __future__ import annotations

import itertools
import logging
import time

import pytest

from migrator import status as st
from migrator.dicomfile import DicomHeader
from migrator.errors import (
    AssociationLost,
    AssociationRejected,
    ConnectError,
    DestinationUnavailable,
    DestinationUnhealthy,
    WouldWait,
)
from migrator.limits.adaptive import START, Autotune
from migrator.limits.breaker import THRESHOLD, LocalBreaker
from migrator.outcomes import FileOutcome, State
from migrator.transfer.destination import SendResult
from migrator.transfer.policy import ABORTED_TWICE, unhealthy
from tests.test_policy_unit import Sleeps, Source, StartDestination, jobs, make
from tests.test_transfer_unit import FakeConn, FakeDestination


def test_an_answer_in_between_resets_the_breakers_count() -> None:
    """THRESHOLD - 1 transient failures, one file stored, as many failures again: not
    THRESHOLD in a row, so the breaker stays closed and the transfer goes on."""
    clock = Sleeps()
    breaker = LocalBreaker(clock)
    n = THRESHOLD - 1
    answers = iter([0xA700] * n + [0] + [0xA700] * n)
    dest = FakeDestination(lambda c, h: next(answers))
    t, got = make(dest, clock, concurrency=1, retries=0, breaker=breaker)
    ended = t.run(jobs(Source(), 2 * n + 1))
    assert ended.error is None and breaker.state() is None
    assert sum(o.state is State.STORED for o in got) == 1 and len(got) == 2 * n + 1


def test_the_controller_hears_each_answer_and_each_out_of_resources() -> None:
    """-j auto grows while answers come as fast as with fewer lanes, and backs off at
    0xA700 (out of resources)."""
    clock = Sleeps()
    auto = Autotune(16, clock=clock)

    def script(conn: FakeConn, h: DicomHeader) -> int:
        clock.now += 0.03  # answers take time: the controller's windows close
        return 0xA700 if h.sop_instance_uid == "1.2.3.150" else 0

    t, got = make(FakeDestination(script), clock, pool_capacity=16, autotune=auto, retries=1)
    t.run(jobs(Source(), 160))
    assert len(got) == 160
    targets = [target for _, target, _ in auto.history]
    assert max(targets) > START, auto.history  # grew on answers
    grown = max(targets)
    assert any(why == "" or "0xA7" in why for _, target, why in auto.history if target < grown)


def test_a_retry_after_longer_than_the_backoff_is_waited_out() -> None:
    """A destination that asks for no retry before 5 s (HTTP 503 Retry-After: 5)."""
    answers = iter([SendResult(st.Outcome.TRANSIENT, 0xA700, "", False, "busy", retry_after=5.0)])
    clock = Sleeps()
    starts: list[float] = []
    dest = StartDestination(lambda h: next(answers, None))
    t, got = make(dest, clock, concurrency=1, on_start=lambda j: starts.append(clock.now))
    t.run(jobs(Source(), 1))
    assert got[0].state is State.STORED and got[0].attempts == 2
    assert starts[1] - starts[0] >= 5.0


def test_a_throttle_delay_spaces_the_files_of_a_lane() -> None:
    clock = Sleeps()
    starts: list[float] = []
    t, got = make(
        FakeDestination(),
        clock,
        concurrency=1,
        throttle_delay=0.2,
        on_start=lambda j: starts.append(clock.now),
    )
    t.run(jobs(Source(), 5))
    assert len(got) == 5
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(starts)), starts


def test_a_file_the_pacs_aborts_on_a_used_association_gets_two_fresh_chances() -> None:
    """Its first abort came after another file's store on the association (not its
    doing for sure): it fails only after two aborts as the first request of fresh ones."""

    def script(conn: FakeConn, h: DicomHeader) -> int | Exception:
        if h.sop_instance_uid == "1.2.3.1":
            return AssociationLost("A-ABORT", by_peer=True)
        return 0

    t, got = make(FakeDestination(script), Sleeps(), concurrency=1, retries=5)
    t.run(jobs(Source(), 3))
    by = {o.sop_instance_uid: o for o in got}
    assert by["1.2.3.1"].state is State.FAILED and ABORTED_TWICE in by["1.2.3.1"].reason
    assert by["1.2.3.1"].attempts == 3
    assert by["1.2.3.0"].state is State.STORED and by["1.2.3.2"].state is State.STORED


def test_connections_lost_by_us_are_not_counted_as_the_files_doing() -> None:
    """A connection reset that the PACS did not ask for (by_peer False) says nothing about
    the file: it is sent again up to --retries, never failed as aborted twice."""

    def script(conn: FakeConn, h: DicomHeader) -> int | Exception:
        return AssociationLost("connection reset", by_peer=False)

    t, got = make(FakeDestination(script), Sleeps(), concurrency=1, retries=3)
    t.run(jobs(Source(), 1))
    assert got[0].state is State.FAILED and got[0].attempts == 4
    assert ABORTED_TWICE not in got[0].reason and "gave up after 4 attempts" in got[0].reason


class Recorder:
    def __init__(self) -> None:
        self.done: list[FileOutcome] = []

    def file_done(self, outcome: FileOutcome) -> None:
        self.done.append(outcome)

    def limiter_waited(self, seconds: float) -> None:
        pass

    def association_opened(self) -> None:
        pass

    def association_aborted(self) -> None:
        pass


def test_every_outcome_reaches_the_observer_and_the_file_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = Recorder()
    t, got = make(FakeDestination(), Sleeps(), concurrency=1, observer=observer)
    with caplog.at_level(logging.INFO, logger="migrator.files"):
        t.run(jobs(Source(), 3))
    assert observer.done == got and len(got) == 3
    logged = [r.getMessage() for r in caplog.records if r.name == "migrator.files"]
    assert [m.split(": ")[0] for m in logged] == [f"stored mem://{i}" for i in range(3)]


@pytest.mark.parametrize(("max_associations", "hint"), [(None, True), (4, False)])
def test_a_pacs_that_turns_every_association_away_as_busy_says_what_to_give(
    max_associations: int | None, hint: bool
) -> None:
    busy = AssociationRejected("rejected: busy", result=2, source=3, reason=2)
    dest = FakeDestination(refuse=lambda n: busy)
    t, _ = make(dest, Sleeps(), concurrency=1, retries=2, max_associations=max_associations)
    ended = t.run(jobs(Source(), 2))
    assert isinstance(ended.error, DestinationUnavailable) and ended.error.rejected
    assert ("give --max-associations" in str(ended.error)) is hint


@pytest.mark.parametrize(("probe_in", "retry_in"), [(-30.0, 1.0), (0.2, 1.0), (10.0, 10.0)])
def test_an_unhealthy_destination_says_when_to_try_again(probe_in: float, retry_in: float) -> None:
    """At least a second from now: a probe already due is not retried in a busy loop."""
    error = unhealthy("PACS", time.time() - 60, "0xA700", time.time() + probe_in, 4.0)
    assert error.retry_in == pytest.approx(retry_in, abs=0.5)
    assert "probing every 4 s" in str(error) and "(0xA700)" in str(error)


def test_a_connection_refused_is_tried_again_after_a_backoff() -> None:
    """Refused twice, then accepted: the files are stored, and the reconnects waited
    0.5 x 2^(n-1) s (+-50 %) each, not at once."""
    clock = Sleeps()
    dest = FakeDestination(refuse=lambda n: ConnectError("connection refused") if n <= 2 else None)
    t, got = make(dest, clock, concurrency=1, retries=3)
    t.run(jobs(Source(), 2))
    assert [o.state for o in got] == [State.STORED] * 2 and dest.attempts == 3
    assert clock.now - 1000 >= 0.25 + 0.5


def test_a_sender_that_may_not_wait_leaves_a_throttle_pause_to_its_caller() -> None:
    """run's inline sender never sleeps: the pause between two files of a lane is a wait."""
    clock = Sleeps()
    t, got = make(FakeDestination(), clock, concurrency=1, throttle_delay=0.2, may_wait=False)
    ended = t.run(jobs(Source(), 3))
    assert isinstance(ended.error, WouldWait)
    assert len(got) == 1 and len(ended.left) == 2 and clock.now == 1000


def test_a_success_gives_the_connection_retries_back() -> None:
    """--retries 2: refused once, then accepted; after a lost association refused twice
    more: never three refusals in a row, so the transfer goes on."""
    refused = {1, 3, 4}
    dest = FakeDestination(
        script=lambda c, h: (
            AssociationLost("reset", by_peer=False)
            if h.sop_instance_uid == "1.2.3.1" and c is dest.opened[0]
            else 0
        ),
        refuse=lambda n: ConnectError("no answer to A-ASSOCIATE-RQ") if n in refused else None,
    )
    t, got = make(dest, Sleeps(), concurrency=1, retries=2)
    ended = t.run(jobs(Source(), 3))
    assert ended.error is None and [o.state for o in got] == [State.STORED] * 3
    assert dest.attempts == 5


@pytest.mark.parametrize(
    ("refusal", "counted"),
    [
        (ConnectError("no answer to A-ASSOCIATE-RQ"), True),
        (AssociationRejected("rejected: busy", result=2, source=3, reason=2), True),
        (ConnectError("connection refused", unreachable=True), False),
    ],
)
def test_the_breaker_counts_a_pacs_that_answers_and_misbehaves_not_one_that_is_down(
    refusal: Exception, counted: bool
) -> None:
    """A PACS that answers and will not associate is unhealthy (the breaker opens: exit 6,
    retried later); one that cannot be reached at all is left to the connection retries
    (DestinationUnavailable: exit 3)."""
    clock = Sleeps()
    breaker = LocalBreaker(clock)
    dest = FakeDestination(refuse=lambda n: refusal)
    t, got = make(dest, clock, concurrency=1, retries=THRESHOLD + 2, breaker=breaker)
    ended = t.run(jobs(Source(), 2))
    assert got == [] and len(ended.left) == 2
    if counted:
        # THRESHOLD refusals open it; after the backoff its probe is due and refused too
        assert isinstance(ended.error, DestinationUnhealthy) and dest.attempts == THRESHOLD + 1
    else:
        assert isinstance(ended.error, DestinationUnavailable)
        assert not isinstance(ended.error, DestinationUnhealthy)
        assert breaker.state() is None and dest.attempts == THRESHOLD + 3


def test_a_file_whose_association_was_lost_is_resent_after_the_first_backoff() -> None:
    clock = Sleeps()
    starts: list[float] = []
    lost = [AssociationLost("reset", by_peer=False)]
    dest = FakeDestination(lambda c, h: lost.pop() if lost else 0)
    t, got = make(dest, clock, concurrency=1, on_start=lambda j: starts.append(clock.now))
    t.run(jobs(Source(), 1))
    assert got[0].state is State.STORED and got[0].attempts == 2
    assert 0.25 <= starts[1] - starts[0] <= 0.75  # retry_backoff 0.5, +-50 %
