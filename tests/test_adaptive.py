"""``-j auto``: associations follow what the PACS and the link give (issue 16).

The controller alone on a clock (slow start, back-off, the fleet's epoch, the ceiling), then
real senders against a PACS with room for N associations: a pynetdicom SCP answering 0xA700
to a C-STORE that arrives while more than N are open. No file may be lost, and once the
controller has learnt, the receiver sees no more than N associations at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator import synth
from migrator.limits.adaptive import (
    BACK_OFF,
    REMEMBER_S,
    START,
    WINDOW_S,
    Autotune,
    LocalSignal,
)
from tests.behaviourhelpers import send
from tests.peers.counting_scp import counting_scp

pytestmark = pytest.mark.timeout(180)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _window(
    tune: Autotune, clock: Clock, per_lane: float, latency: float, cap: float = 1e9
) -> None:
    """One measuring window: each association adds ``per_lane`` files/s up to ``cap``
    (the PACS or the link); answers take ``latency`` s, or longer once requests queue at
    the cap (Little's law: associations ÷ files/s)."""
    changes = len(tune.history)
    start = clock.now
    while len(tune.history) == changes and clock.now - start < 10 * WINDOW_S:
        rate = min(cap, per_lane * tune.target)
        clock.now += 1 / rate
        tune.answered(max(latency, tune.target / rate))


def test_slow_start_doubles_until_requests_queue_then_holds_at_the_plateau() -> None:
    clock = Clock()
    tune = Autotune(64, clock=clock)
    assert tune.target == START
    # A link 20 ms away: each association adds 50 files/s, up to a PACS limit of 600.
    for _ in range(12):
        _window(tune, clock, 50.0, 0.02, cap=600.0)
    assert 12 <= tune.target <= 24, tune.history
    assert [t for _, t, _ in tune.history[1:4]] == [4, 8, 16]


def _one_window(tune: Autotune, clock: Clock, latency: float) -> None:
    """Answers 1 ms apart, each taking ``latency``, until one measuring window closes."""
    while True:
        clock.now += 0.001
        settling = clock.now < tune._window_start
        tune.answered(latency)
        if not settling and not tune._window:
            return


def test_slow_start_doubles_about_once_a_round_trip() -> None:
    clock = Clock()
    tune = Autotune(64, clock=clock)
    # A PACS 20 ms away with room to spare: 2 -> 64 in five doublings, each a window of
    # about one answer per association after one round trip of settling.
    while tune.target < 64 and clock.now < 101.0:
        _window(tune, clock, 50.0, 0.02)
    assert [t for _, t, _ in tune.history] == [2, 4, 8, 16, 32, 64]
    assert clock.now - 100.0 < 0.35, tune.history


@pytest.mark.parametrize("mild_windows", [1, 2])
def test_one_window_of_mild_queueing_holds_slow_start_two_end_it(mild_windows: int) -> None:
    """A passing CPU spike (run's workers booting beside its sender) must not end slow
    start: after one mild window the next clean one doubles; after two, steps are small."""
    clock = Clock()
    tune = Autotune(64, clock=clock)
    while tune.target < 8:
        _one_window(tune, clock, 0.020)
    # queued = 8 × (1 − 20/23) ≈ 1.04: above ALPHA's max(1, 0.8), below BETA's 3.
    for _ in range(mild_windows):
        _one_window(tune, clock, 0.023)
        assert tune.target == 8, tune.history
    _one_window(tune, clock, 0.020)
    assert tune.target == (16 if mild_windows == 1 else 10), tune.history


def test_congestion_backs_off_once_per_window_and_the_fleet_hears_it() -> None:
    clock = Clock()
    signal = LocalSignal()
    a, b = Autotune(64, signal, clock=clock), Autotune(64, signal, clock=clock)
    for tune in (a, b):  # both have read the fleet's epoch once
        _window(tune, clock, 100.0, 0.01)
    a.target = b.target = 10
    for _ in range(5):  # five 0xA700 answers in one window: one back-off
        a.congestion("0xA700")
    assert a.target == int(10 * BACK_OFF)
    clock.now += 2.0  # b looks at the shared epoch (at most once a second)
    b.answered(0.01)
    assert b.target == int(10 * BACK_OFF), b.history


def test_latency_that_rises_with_no_gain_backs_off_and_the_ceiling_holds() -> None:
    clock = Clock()
    tune = Autotune(6, clock=clock)
    for _ in range(6):
        _window(tune, clock, 100.0, 0.01)
    assert tune.target == 6  # the ceiling (--max-associations)
    _window(tune, clock, 100.0, 0.05)  # the same throughput, 5x the latency
    assert tune.target == int(6 * BACK_OFF), tune.history


def test_what_the_pacs_refused_bounds_growth_for_a_while() -> None:
    clock = Clock()
    tune = Autotune(64, clock=clock)
    for _ in range(3):
        _window(tune, clock, 100.0, 0.01)
    refused_at, refused_when = tune.target, clock.now
    tune.congestion("0xA700")
    while clock.now < refused_when + REMEMBER_S - 1:  # throughput grows with each one, yet
        _window(tune, clock, 100.0, 0.01)
    after = [n for when, n, _ in tune.history if when > refused_when]
    assert max(after) == tune.target == refused_at - 1, tune.history
    while clock.now < refused_when + REMEMBER_S + 2:  # room may have opened
        _window(tune, clock, 100.0, 0.01)
    assert tune.target > refused_at, tune.history


def test_after_the_fleet_wide_cap_a_sender_doubles_back_to_where_it_was() -> None:
    """Another sender held the slots for a while: that is no queue at the PACS, so this
    one returns to its level by doubling, not one association per window."""
    clock = Clock()
    tune = Autotune(64, clock=clock)
    for _ in range(12):  # past slow start, at the plateau of a PACS limit of 600 files/s
        _window(tune, clock, 50.0, 0.02, cap=600.0)
    level = tune.target
    assert 8 <= level <= 24, tune.history
    tune.capped(1)
    assert tune.target == 1
    seen = len(tune.history)
    for _ in range(level.bit_length() + 1):
        _window(tune, clock, 50.0, 0.02, cap=600.0)
    back = [n for _, n, _ in tune.history[seen:]]
    doubling = [2**k for k in range(1, level.bit_length()) if 2**k < level] + [level]
    assert back[: len(doubling)] == doubling, (level, tune.history)


@pytest.mark.slow
@pytest.mark.parametrize("front_end", ["store", "run"])
def test_auto_converges_below_a_pacs_with_room_for_n_associations(
    front_end: str, tmp_path: Path
) -> None:
    room = 3
    inputs = tmp_path / "in"
    files = synth.write_corpus(inputs, count=600, size="tiny", seed=1602)
    with counting_scp(response_delay=0.005, a700_above=room) as scp:
        result = send(front_end, inputs, scp.port, "COUNTING", tmp_path, "-j", "auto", "-v")
    assert result.rc == 0, result.tail()
    assert scp.distinct == len(files)  # every file stored: the 0xA700s were sent again
    assert scp.refused > 0, "the test must make the senders meet the PACS's limit"
    # Once learnt (the last quarter of the answers), at most N associations at a time:
    # what the PACS refused bounds each sender's growth (see REMEMBER_S).
    last = [n for _, n in scp.seen_open[-len(scp.seen_open) // 4 :]]
    print(f"refused {scp.refused}, last quarter max {max(last)}")
    assert max(last) <= room, (max(last), scp.refused, result.tail())
    assert "associations" in result.output and " -> " in result.output, result.tail()


@pytest.mark.slow
@pytest.mark.parametrize("front_end", ["store", "run"])
def test_auto_never_opens_more_than_max_associations(front_end: str, tmp_path: Path) -> None:
    # A PACS that rewards every association (each answer takes 20 ms): -j auto wants many,
    # and the fleet-wide cap (every sending process of `run` together) still holds.
    cap = 3
    inputs = tmp_path / "in"
    files = synth.write_corpus(inputs, count=300, size="tiny", seed=1603)
    with counting_scp(response_delay=0.02) as scp:
        result = send(
            front_end,
            inputs,
            scp.port,
            "COUNTING",
            tmp_path,
            "-j",
            "auto",
            "--max-associations",
            str(cap),
            "-v",
        )
    assert result.rc == 0, result.tail()
    assert scp.distinct == len(files)
    assert scp.max_open <= cap, (scp.max_open, result.tail())
    assert scp.max_open == cap, "auto must use the room it is given"
