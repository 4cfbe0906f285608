"""How many lanes (associations) the per-file policy keeps: -j auto following its
controller, a PACS or the fleet-wide cap turning associations away, and the associations
opened side by side. Scripted connections on a controllable clock (real peers:
test_adaptive.py); written for the mutation survivors of migrator/transfer/policy.py
(docs/testing.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Set

import pytest

from migrator.dicomfile import DicomHeader
from migrator.errors import AssociationRejected, MigratorError, SlotTimeout
from migrator.limits.adaptive import Autotune
from migrator.outcomes import State
from migrator.transfer.destination import Pair
from tests.test_policy_unit import Sleeps, Source, jobs, make
from tests.test_transfer_unit import FakeConn, FakeDestination

# -- -j auto: the lanes follow the controller ---------------------------------------------


def test_lanes_grow_and_shrink_with_the_controllers_target() -> None:
    """New lanes open their associations side by side; idle lanes leave at once (one at a
    time too) and give their association back; the last lane stays."""
    clock = Sleeps()
    auto = Autotune(8, clock=clock)
    plan = {5: 6, 25: 3, 35: 2, 45: 1}  # after n answers, the controller wants this many
    answered = 0
    widths: list[tuple[int, int]] = []  # (the target, the lanes) at each file's start

    def script(conn: FakeConn, h: DicomHeader) -> int:
        nonlocal answered
        answered += 1
        auto.target = plan.get(answered, auto.target)
        return 0

    dest = ThreadDestination(script)
    source = Source()
    t, got = make(
        dest,
        clock,
        pool_capacity=8,
        autotune=auto,
        on_start=lambda j: widths.append((auto.target, len(t.lanes))),
    )
    assert len(t.lanes) == 2  # Autotune starts at START
    t.run(jobs(source, 60))
    assert [o.state for o in got] == [State.STORED] * 60
    # every answer is in before the next round: the lanes are exactly the target
    assert all(lanes == target for target, lanes in widths), widths
    assert {lanes for _, lanes in widths} == {1, 2, 3, 6}  # START, grown, 3 steps down
    assert dest.by_sender.count(False) >= 4  # the 4 new lanes' associations, in threads
    retired = [c for c in dest.opened if c.released]
    assert len(retired) >= 5  # the lanes that left gave their associations back
    assert len(t.pool) <= 1


class ThreadDestination(FakeDestination):
    """Records which connections were opened by the sending thread itself."""

    def __init__(self, script: Callable[[FakeConn, DicomHeader], int] = lambda c, h: 0) -> None:
        super().__init__(script)
        self.sender = threading.get_ident()  # made by the thread that runs the transfer
        self.by_sender: list[bool] = []

    def connect(self, needed: Pair, wanted: Set[Pair]) -> FakeConn:
        self.by_sender.append(threading.get_ident() == self.sender)
        return super().connect(needed, wanted)


@pytest.mark.parametrize(("lanes", "pool_capacity"), [(4, None), (4, 1), (3, None)])
def test_the_first_association_opens_alone_and_the_other_lanes_open_side_by_side(
    lanes: int, pool_capacity: int | None
) -> None:
    """One connect first (an unreachable PACS costs one timeout, not one per lane), then
    the associations the other lanes lack, in threads at once (each costs round trips);
    also from a pool made for fewer connections (the transfer widens it to its lanes)."""
    dest = ThreadDestination()
    t, got = make(dest, Sleeps(), concurrency=lanes, pool_capacity=pool_capacity)
    t.run(jobs(Source(), 12))
    assert len(got) == 12 and len(dest.opened) == lanes
    assert dest.by_sender == [True] + [False] * (lanes - 1)


@pytest.mark.parametrize(
    ("refusal", "why"),
    [
        (AssociationRejected("busy", result=2, source=3, reason=2), "busy"),
        (SlotTimeout("no free slot under --max-associations"), "fleet-wide cap"),
    ],
)
def test_associations_turned_away_under_j_auto_take_lanes_away(
    refusal: MigratorError, why: str
) -> None:
    """The PACS (busy) or the fleet-wide cap (no free slot) allows 3 of the 6 lanes the
    controller wants: it is told (congestion: fewer; the cap: as many as there are), the
    lanes that got none leave, and every file goes on the 3 associations there are."""
    clock = Sleeps()
    auto = Autotune(8, clock=clock)
    auto.target = 6
    dest = FakeDestination(refuse=lambda n: refusal if n > 3 else None)
    t, got = make(dest, clock, pool_capacity=8, autotune=auto)
    ended = t.run(jobs(Source(), 30))
    assert ended.error is None and [o.state for o in got] == [State.STORED] * 30
    assert len(dest.opened) == 3
    assert any(why in reason for _, _, reason in auto.history), auto.history
    assert auto.target <= 4 and len(t.lanes) <= 4


def test_the_fleet_wide_cap_without_j_auto_only_shrinks_the_lanes() -> None:
    """-j 4 and no free slot in the fleet-wide cap beyond 2: going on with 2 lanes."""
    dest = FakeDestination(refuse=lambda n: SlotTimeout("no free slot") if n > 2 else None)
    t, got = make(dest, Sleeps(), concurrency=4)
    ended = t.run(jobs(Source(), 20))
    assert ended.error is None and [o.state for o in got] == [State.STORED] * 20
    assert len(dest.opened) == 2
