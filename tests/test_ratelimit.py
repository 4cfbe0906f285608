"""GCRA limiter: semantics on a fake clock (hypothesis), thread safety on the real clock."""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator.errors import ConfigError
from migrator.limits.rate import (
    BucketParams,
    Limits,
    LocalLimiter,
    NullLimiter,
    RateLimiter,
    gcra_reserve,
    make_limiter,
)

EPS = 1e-6  # float slack: TATs are sums of many 1/rate steps


@dataclass
class FakeClock:
    now: float = 1000.0  # arbitrary origin: the limiter must not care
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass(frozen=True)
class Sent:
    at: float  # send time = arrival + wait
    files: int
    nbytes: int


def _run(
    limits: Limits, arrivals: list[tuple[float, int, int]], clock: FakeClock | None = None
) -> list[Sent]:
    """Reserve each (gap, files, nbytes) in order; the clock advances by the gaps only
    (callers are concurrent: nobody waits for the previous one to send)."""
    clock = clock or FakeClock()
    limiter = LocalLimiter(limits, clock=clock, sleep=clock.sleep)
    sent = []
    for gap, files, nbytes in arrivals:
        clock.now += gap
        wait = limiter.reserve(files, nbytes)
        assert wait >= 0.0
        sent.append(Sent(clock.now + wait, files, nbytes))
    return sent


def _max_in_window(sent: list[Sent], unit: str, rate: float) -> float:
    """max over all windows [s_i, s_j] of (units sent in it - rate * length)."""
    worst = -math.inf
    for i in range(len(sent)):
        total = 0
        for j in range(i, len(sent)):
            total += getattr(sent[j], unit)
            worst = max(worst, total - rate * (sent[j].at - sent[i].at))
    return worst


rates = st.floats(min_value=0.5, max_value=5000.0, allow_nan=False, allow_infinity=False)
gaps = st.one_of(
    st.just(0.0), st.floats(min_value=0.0, max_value=2.0, allow_nan=False, allow_infinity=False)
)


@st.composite
def workloads(draw: st.DrawFn) -> tuple[Limits, list[tuple[float, int, int]]]:
    files_rate = draw(st.one_of(st.none(), rates))
    bytes_rate = draw(st.one_of(st.none(), st.floats(min_value=100.0, max_value=1e7)))
    if files_rate is None and bytes_rate is None:
        files_rate = draw(rates)
    limits = Limits(
        files_per_s=files_rate,
        bytes_per_s=bytes_rate,
        burst_files=draw(st.integers(min_value=1, max_value=20)),
        burst_bytes=draw(st.one_of(st.none(), st.integers(min_value=1, max_value=10**7))),
    )
    n = draw(st.integers(min_value=1, max_value=60))
    arrivals = [
        (
            draw(gaps),
            draw(st.integers(min_value=1, max_value=limits.burst_files)),
            draw(st.integers(min_value=0, max_value=3 * 10**7)),  # may exceed the byte burst
        )
        for _ in range(n)
    ]
    return limits, arrivals


# --- properties on a fake clock ------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_window_bounds(work: tuple[Limits, list[tuple[float, int, int]]]) -> None:
    """Any window of W seconds: files <= rate*W + burst; bytes <= rate*W + burst + max file.

    (GCRA charged at the send time gives the tighter rate*W + max(burst, max request).)
    """
    limits, arrivals = work
    sent = _run(limits, arrivals)
    if limits.files_per_s is not None:
        excess = _max_in_window(sent, "files", limits.files_per_s)
        assert excess <= limits.burst_files + EPS * max(1.0, len(sent))
    if limits.bytes_per_s is not None:
        burst = limits.effective_burst_bytes
        assert burst is not None
        biggest = max(s.nbytes for s in sent)
        excess = _max_in_window(sent, "nbytes", limits.bytes_per_s)
        slack = EPS * sum(s.nbytes for s in sent)
        assert excess <= burst + biggest + slack
        assert excess <= max(burst, biggest) + slack


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_fifo(work: tuple[Limits, list[tuple[float, int, int]]]) -> None:
    """Send times never go backwards: a later reservation never overtakes an earlier one."""
    limits, arrivals = work
    sent = _run(limits, arrivals)
    for earlier, later in itertools.pairwise(sent):
        assert later.at >= earlier.at - 1e-9


@settings(max_examples=200, deadline=None)
@given(
    limits=st.builds(Limits, files_per_s=rates, burst_files=st.integers(min_value=1, max_value=50)),
    sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=30),
)
def test_same_instant_later_never_waits_less(limits: Limits, sizes: list[int]) -> None:
    clock = FakeClock()
    limiter = LocalLimiter(limits, clock=clock, sleep=clock.sleep)
    waits = [limiter.reserve(min(n, limits.burst_files)) for n in sizes]
    assert waits == sorted(waits)


@settings(max_examples=100, deadline=None)
@given(rate=rates, burst=st.integers(min_value=1, max_value=50))
def test_files_rate_converges(rate: float, burst: int) -> None:
    """Saturating demand: N files go in (N - burst)/rate seconds, i.e. at the limit."""
    n = 2000
    sent = _run(Limits(files_per_s=rate, burst_files=burst), [(0.0, 1, 0)] * n)
    assert sent[burst - 1].at == pytest.approx(1000.0)  # the burst goes at once
    assert sent[burst].at > 1000.0
    duration = sent[-1].at - sent[0].at
    assert duration == pytest.approx((n - burst) / rate, rel=1e-9)
    assert (n - burst) / duration == pytest.approx(rate, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    byte_rate=st.floats(min_value=1e3, max_value=1e8),
    sizes=st.lists(st.integers(min_value=1, max_value=5 * 10**7), min_size=50, max_size=200),
)
def test_bytes_rate_converges(byte_rate: float, sizes: list[int]) -> None:
    limits = Limits(bytes_per_s=byte_rate)
    burst = limits.effective_burst_bytes
    assert burst is not None
    sent = _run(limits, [(0.0, 1, n) for n in sizes])
    total = sum(sizes)
    # the last file goes once everything before it is paid for (minus at most one burst)
    assert sent[-1].at - 1000.0 <= total / byte_rate * (1 + 1e-9)
    assert sent[-1].at - 1000.0 >= (total - sizes[-1] - burst) / byte_rate * (1 - 1e-9)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=11, max_value=1000), min_size=1, max_size=40),
    gap=st.floats(min_value=0.0, max_value=5.0),
)
def test_oversize_requests_progress_through_debt(sizes: list[int], gap: float) -> None:
    """Every request is larger than the burst: each goes when the bucket is full again."""
    limits = Limits(bytes_per_s=10.0, burst_bytes=10)
    sent = _run(limits, [(gap, 1, n) for n in sizes])
    free_at = -math.inf  # when the bucket is full again
    for k, (size, s) in enumerate(zip(sizes, sent, strict=True)):
        arrival = 1000.0 + (k + 1) * gap
        assert s.at == pytest.approx(max(arrival, free_at))
        free_at = s.at + size / 10.0  # the whole size is charged: debt beyond the burst
    assert all(math.isfinite(s.at) for s in sent)


def test_oversize_example_from_the_docs() -> None:
    """1 GB at 10 MB/s with a 10 MB burst: sent at once, then the next file waits ~100 s."""
    mb = 1_000_000
    clock = FakeClock()
    limiter = LocalLimiter(
        Limits(bytes_per_s=10 * mb, burst_bytes=10 * mb), clock=clock, sleep=clock.sleep
    )
    assert limiter.reserve(1, 1000 * mb) == 0.0
    assert limiter.reserve(1, 1 * mb) == pytest.approx(100.0 - 9 * 0.1)  # 1 MB fits the burst
    clock.now += 200.0  # idle long enough: full again (no negative TAT carried)
    assert limiter.reserve(1, 10 * mb) == 0.0
    assert limiter.reserve(1, 1) > 0.0


def test_byte_wait_does_not_bunch_files() -> None:
    """Files held back by the byte bucket must not be released together afterwards."""
    clock = FakeClock()
    limits = Limits(files_per_s=1.0, burst_files=1, bytes_per_s=1.0, burst_bytes=1)
    limiter = LocalLimiter(limits, clock=clock, sleep=clock.sleep)
    assert limiter.reserve(1, 10) == 0.0  # oversize: debt of 10 s in bytes
    waits = [limiter.reserve(1, 0) for _ in range(5)]
    # 10 s of byte debt, then one file per second (not all five at t = 10)
    assert waits == pytest.approx([9.0, 10.0, 11.0, 12.0, 13.0])


def test_burst_then_steady() -> None:
    clock = FakeClock()
    limiter = LocalLimiter(Limits(files_per_s=10.0, burst_files=3), clock=clock)
    assert [limiter.reserve() for _ in range(5)] == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])
    clock.now += 10.0
    assert limiter.reserve(3) == 0.0  # refilled to the burst, no more
    assert limiter.reserve() == pytest.approx(0.1)


def test_acquire_sleeps_the_wait() -> None:
    clock = FakeClock()
    limiter = LocalLimiter(Limits(files_per_s=2.0, burst_files=1), clock=clock, sleep=clock.sleep)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(0.5)
    assert limiter.acquire() == pytest.approx(0.5)
    assert clock.slept == pytest.approx([0.5, 0.5])
    assert clock.now == pytest.approx(1001.0)


def test_set_limits_keeps_debt() -> None:
    clock = FakeClock()
    limiter = LocalLimiter(Limits(files_per_s=1.0, burst_files=1), clock=clock)
    limiter.reserve()
    assert limiter.reserve() == pytest.approx(1.0)
    limiter.set_limits(Limits(files_per_s=100.0, burst_files=1))
    # the slot reserved at +1 s was charged 1 s at the old rate: busy until +2 s; the new
    # rate (and burst) apply from there
    assert limiter.reserve() == pytest.approx(2.0)
    assert limiter.reserve() == pytest.approx(2.01)
    assert limiter.limits.files_per_s == 100.0


def test_gcra_reserve_is_the_limiter_step() -> None:
    buckets = (BucketParams(0.1, 2), BucketParams(0.001, 1000))
    tats, wait = gcra_reserve([-math.inf, -math.inf], buckets, (1, 500), now=5.0)
    assert wait == 0.0
    assert tats == pytest.approx([5.1, 5.5])
    tats, wait = gcra_reserve(tats, buckets, (1, 1500), now=5.0)
    # files: allow 5.1 + 0.1 - 0.2 = 5.0; bytes (oversize): allow when full = 5.5
    assert wait == pytest.approx(0.5)
    assert tats == pytest.approx([5.6, 7.0])
    tats2, wait = gcra_reserve(tats, (None, buckets[1]), (1, 0), now=5.0)
    assert tats2[0] == tats[0]  # unlimited bucket untouched


def test_negative_costs_rejected() -> None:
    limiter = LocalLimiter(Limits(files_per_s=1.0))
    with pytest.raises(ValueError):
        limiter.reserve(-1)
    with pytest.raises(ValueError):
        limiter.reserve(1, -5)


def test_a_bare_reserve_is_one_file_and_no_bytes() -> None:
    """reserve() and acquire() without arguments charge one file and no byte: with a byte
    limit of 1 B/s (burst 1), such calls never wait on bytes."""
    clock = FakeClock()
    limits = Limits(files_per_s=1000.0, burst_files=1000, bytes_per_s=1.0, burst_bytes=1)
    limiter = LocalLimiter(limits, clock=clock, sleep=clock.sleep)
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    # and one file each: the files bucket (burst 1) is charged 1 ms per call
    files_only = LocalLimiter(Limits(files_per_s=1000.0, burst_files=1), clock=clock)
    assert [files_only.reserve() for _ in range(3)] == pytest.approx([0.0, 0.001, 0.002])


def test_bytes_alone_and_files_alone_may_be_reserved() -> None:
    """A cost of zero files (bytes only: the rest of a large file) or zero bytes is valid."""
    clock = FakeClock()
    limits = Limits(files_per_s=1.0, burst_files=1, bytes_per_s=100.0, burst_bytes=100)
    limiter = LocalLimiter(limits, clock=clock)
    assert limiter.reserve(0, 100) == 0.0
    assert limiter.reserve(0, 100) == pytest.approx(1.0)  # bytes only: 100 B at 100 B/s
    # the files bucket is still full, but reservations are FIFO: behind the bytes before it
    assert limiter.reserve(1, 0) == pytest.approx(1.0)
    assert limiter.reserve(1, 0) == pytest.approx(2.0)  # now the files bucket (1/s) counts


# --- factory and protocol ------------------------------------------------------------------


def test_make_limiter() -> None:
    null = make_limiter(Limits())
    assert isinstance(null, NullLimiter)
    assert null.reserve(10**6, 10**12) == 0.0
    assert null.acquire() == 0.0
    local = make_limiter(Limits(bytes_per_s=1e6))
    assert isinstance(local, LocalLimiter)
    for lim in (null, local):
        assert isinstance(lim, RateLimiter)


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"files_per_s": 0}, "files_per_s must be a positive number of files per second"),
        ({"files_per_s": -3.0}, "files_per_s must be a positive number"),
        ({"files_per_s": math.inf}, "files_per_s must be a positive number"),
        ({"files_per_s": math.nan}, "files_per_s must be a positive number"),
        ({"files_per_s": "10"}, "files_per_s must be a number of files per second"),
        ({"files_per_s": True}, "files_per_s must be a number"),
        ({"bytes_per_s": 0.0}, "bytes_per_s must be a positive number of bytes per second"),
        ({"bytes_per_s": -1}, "bytes_per_s must be a positive number"),
        ({"burst_files": 0}, "burst_files must be at least 1, got 0"),
        ({"burst_files": 2.5}, "burst_files must be a whole number, got 2.5"),
        ({"bytes_per_s": 10.0, "burst_bytes": 0}, "burst_bytes must be at least 1"),
        ({"bytes_per_s": 10.0, "burst_bytes": -2}, "burst_bytes must be at least 1"),
    ],
)
def test_validation_messages(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_default_byte_burst_is_one_second() -> None:
    assert Limits(bytes_per_s=10_000_000.0).effective_burst_bytes == 10_000_000
    assert Limits(bytes_per_s=0.25).effective_burst_bytes == 1
    assert Limits(bytes_per_s=5.0, burst_bytes=3).effective_burst_bytes == 3
    assert Limits(files_per_s=1.0).effective_burst_bytes is None
    assert Limits().unlimited and not Limits(files_per_s=1.0).unlimited


# --- threads on the real clock -------------------------------------------------------------


def test_thread_safety_real_clock() -> None:
    """8 threads x 50 acquisitions at 200 files/s, burst 10: at least (400 - 10)/200 s."""
    limiter = LocalLimiter(Limits(files_per_s=200.0, burst_files=10))
    waits: list[float] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(8)

    def worker() -> None:
        start_gate.wait()
        for _ in range(50):
            w = limiter.acquire()
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - t0
    assert len(waits) == 400
    assert elapsed >= (400 - 10) / 200 - 0.02  # sleep() may return a hair early on some OSes
    assert elapsed < 10.0  # and nobody was starved or double-charged
    assert sum(1 for w in waits if w == 0.0) <= 10 + 1  # only the burst goes without waiting
