"""Redis GCRA limiter against a real redis-server (TESTING.md §4.4): the Lua script is
property-tested against :func:`gcra_reserve` on a fake clock, then exercised in real time by
several clients, across limit changes, SCRIPT FLUSH, a Redis restart and an outage."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator.keys import limiter_key
from migrator.limits.rate import Limits, RateLimiter, gcra_reserve
from migrator.limits.rate_redis import (
    UNLIMITED_CACHE_S,
    RedisLimiter,
    conf_key,
    get_limits,
    make_redis_limiter,
    retry_redis,
    set_limits,
    state_key,
)
from tests.peers.redis import RedisPeer, redis_peer

pytestmark = pytest.mark.timeout(60)

EPOCH = 1_795_000_000.125  # fake "Redis TIME" of today's magnitude: same float precision


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisPeer]:
    """One server for the tests that do not disturb it (each uses its own key): a stopped
    server's exit is seen ~2 s late here, which per test would double the module's runtime.
    Restart and outage tests use the function-scoped ``redis_server``."""
    with redis_peer(tmp_path_factory.mktemp("redis")) as peer:
        yield peer


def _key() -> str:
    return limiter_key(f"pacs-{uuid.uuid4().hex[:8]}:104:ORTHANC")


def _tats(client: redis.Redis, key: str) -> list[float]:
    """The stored TATs as gcra_reserve sees them (absent = -inf = bucket full)."""
    state = client.get(state_key(key))
    raw = state.decode().split(" ") if state else ["", ""]
    return [float(v) if v else -math.inf for v in raw]


# --- the script is gcra_reserve ------------------------------------------------------------

limits_st = st.builds(
    Limits,
    files_per_s=st.none() | st.floats(min_value=0.5, max_value=2000.0),
    bytes_per_s=st.none() | st.floats(min_value=100.0, max_value=1e7),
    burst_files=st.integers(min_value=1, max_value=20),
    burst_bytes=st.none() | st.integers(min_value=1, max_value=50_000),
)
step_st = st.tuples(
    st.just(0.0) | st.floats(min_value=0.0, max_value=3.0),  # time advance
    st.integers(min_value=0, max_value=30),  # files: may exceed burst_files (debt)
    st.integers(min_value=0, max_value=200_000),  # bytes: often exceeds burst_bytes (debt)
    st.none() | limits_st,  # set_limits before this step (taking effect mid-run)
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    fallback=limits_st,
    initial=st.none() | limits_st,
    steps=st.lists(step_st, min_size=1, max_size=40),
)
def test_script_matches_gcra_reserve_on_a_fake_clock(
    shared_redis: RedisPeer,
    fallback: Limits,
    initial: Limits | None,
    steps: list[tuple[float, int, int, Limits | None]],
) -> None:
    """Waits and both stored TATs equal gcra_reserve's exactly, for any sequence of costs,
    time advances and limit changes, including fallback limits and requests above the burst."""
    client = shared_redis.client()
    key = _key()
    limiter = RedisLimiter(client, key, fallback)
    current = fallback
    if initial is not None:
        set_limits(client, key, initial)
        current = initial
    tats = [-math.inf, -math.inf]
    now = EPOCH
    for advance, files, nbytes, change in steps:
        if change is not None:
            set_limits(client, key, change)
            current = change
        now += advance
        tats, expected = gcra_reserve(tats, current.buckets(), (files, nbytes), now)
        assert limiter.reserve_at(now, files, nbytes) == expected
        assert _tats(client, key) == tats


def test_state_expires_after_its_latest_tat(shared_redis: RedisPeer) -> None:
    """Idle destinations leave no state: the TAT hash expires a little after its TAT."""
    client = shared_redis.client()
    key = _key()
    limiter = RedisLimiter(client, key, Limits(files_per_s=1.0, burst_files=1))
    limiter.reserve()
    limiter.reserve()  # TAT ~2 s ahead
    ttl_ms = client.pttl(state_key(key))
    # 2 s + the 10 s margin, less the time since (up to a second on a loaded machine)
    assert 11_000 < ttl_ms <= 12_000, ttl_ms


@pytest.mark.parametrize(
    "fields",
    [
        {"files_per_s": "2.5"},  # an operator's `HSET …:conf files_per_s 2.5`: burst 10
        {"bytes_per_s": "0.5"},  # under 1 B/s: the byte burst is still 1 byte
        {"bytes_per_s": "100.5"},  # one second of it, rounded up: 101 bytes
        {"burst_files": "3"},  # only a burst: unlimited, yet the fallback no longer applies
        {"burst_bytes": "7"},
    ],
    ids=lambda f: "+".join(f),
)
def test_a_partial_conf_hash_applies_as_get_limits_reads_it(
    shared_redis: RedisPeer, fields: dict[str, str]
) -> None:
    """A conf hash with only some fields (written by hand, or by an older version) still
    replaces the fallback, with Limits' defaults for the rest: the script's waits are
    gcra_reserve's under get_limits(), file by file."""
    client = shared_redis.client()
    key = _key()
    client.hset(conf_key(key), mapping=fields)
    stored = get_limits(client, key)
    assert stored is not None
    limiter = RedisLimiter(client, key, Limits(files_per_s=1.0, burst_files=1))
    tats = [-math.inf, -math.inf]
    for step in range(14):
        now = EPOCH + step * 0.01
        nbytes = 37 if step % 2 == 0 else 1  # above and below each byte burst
        tats, expected = gcra_reserve(tats, stored.buckets(), (1, nbytes), now)
        assert limiter.reserve_at(now, 1, nbytes) == expected, step


def test_a_bare_reserve_or_acquire_is_one_file_and_no_byte(shared_redis: RedisPeer) -> None:
    """Without arguments: one file, no byte. At 1 B/s such calls never wait on bytes, and
    at 4 files/s (burst 1) each waits its quarter of a second: acquire() sleeps it."""
    client = shared_redis.client()
    key = _key()
    set_limits(client, key, Limits(files_per_s=1000.0, burst_files=1000, bytes_per_s=1.0))
    limiter = RedisLimiter(client, key, Limits())
    assert [limiter.reserve() for _ in range(3)] == [0.0] * 3
    fake = _key()  # on the fake clock: a key of its own
    set_limits(client, fake, Limits(files_per_s=1000.0, burst_files=1000, bytes_per_s=1.0))
    assert [RedisLimiter(client, fake, Limits()).reserve_at(EPOCH) for _ in range(3)] == [0.0] * 3
    assert [limiter.acquire() for _ in range(3)] == [0.0] * 3
    set_limits(client, key, Limits(files_per_s=4.0, burst_files=1))
    slow = RedisLimiter(client, _key(), Limits(files_per_s=4.0, burst_files=1))
    assert slow.acquire() == 0.0
    t0 = time.monotonic()
    waited = slow.acquire()
    # one file's quarter second, less the gap between the calls; and slept, not returned
    assert 0.1 <= waited <= 0.251, waited
    assert time.monotonic() - t0 >= waited - 0.01


def test_retry_redis_backs_off_from_50_ms_doubling_to_1_s() -> None:
    """The pauses between attempts (jittered to 50-100 % of the step): 50 ms, 100 ms, …,
    at most 1 s; one warning at the first failure, one line when Redis is back."""
    call, calls = _flaky(7)
    slept: list[float] = []
    assert retry_redis(call, "test", outage_s=60.0, sleep=slept.append) == "ok"
    assert calls[0] == 8
    steps = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert len(slept) == len(steps)
    for pause, step in zip(slept, steps, strict=True):
        assert step * 0.5 <= pause <= step, (slept, steps)


@pytest.mark.parametrize("failures", [1, 3])
def test_retry_redis_warns_once_and_says_when_redis_is_back(
    caplog: pytest.LogCaptureFixture, failures: int
) -> None:
    call, _ = _flaky(failures)
    with caplog.at_level("INFO", logger="migrator.limits.rate_redis"):
        retry_redis(call, "a test", outage_s=60.0, sleep=lambda s: None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "redis unreachable during a test (Connection refused); retrying",  # at the first
        f"redis reachable again for a test after {failures} failed attempts",
    ], lines


def test_the_fallback_byte_burst_applies_without_a_conf_hash(shared_redis: RedisPeer) -> None:
    """The worker's own limits, burst included, while no limits are stored: 10-byte burst
    at 1000 B/s, so a second 10-byte file waits for the first's 5 bytes to drain."""
    client = shared_redis.client()
    fallback = Limits(bytes_per_s=1000.0, burst_bytes=10)
    limiter = RedisLimiter(client, _key(), fallback)
    tats = [-math.inf, -math.inf]
    for nbytes in (5, 10, 10):
        tats, expected = gcra_reserve(tats, fallback.buckets(), (1, nbytes), EPOCH)
        assert limiter.reserve_at(EPOCH, 1, nbytes) == expected
    assert expected > 0


def test_a_long_owed_wait_keeps_the_state_until_it_is_paid(shared_redis: RedisPeer) -> None:
    """A 100 MB file at 1 MB/s leaves 100 s of debt: the state must live that long plus the
    10 s margin (PX is milliseconds). Were it to expire after ~10 s, the next large file
    would find an absent TAT (a full bucket) and go at once: large files would escape the
    byte limit. Every file behind the debt waits it off."""
    client = shared_redis.client()
    key = _key()
    set_limits(client, key, Limits(bytes_per_s=1_000_000.0, burst_bytes=1_000_000))
    limiter = RedisLimiter(client, key, Limits())
    assert limiter.reserve(1, 100_000_000) == 0.0  # a full bucket admits it: debt
    ttl_ms = client.pttl(state_key(key))
    # 100 s of debt + 10 s; a loaded machine may take a while between the two calls
    assert 105_000 <= ttl_ms <= 110_000, ttl_ms
    assert limiter.reserve(1, 1_000_000) == pytest.approx(100.0, abs=5.0)
    assert 105_000 <= client.pttl(state_key(key)) <= 111_000


# --- real time, several clients ------------------------------------------------------------


@pytest.mark.slow
def test_four_clients_share_one_rate(shared_redis: RedisPeer) -> None:
    """4 threads, each with its own connection, at 50/s burst 10 for 3 s: ~50*3+10 files
    in total, no 1-s window above rate + 2 x burst, and every thread gets a fair share."""
    rate, burst, duration, threads = 50.0, 10, 3.0, 4
    key = _key()
    set_limits(shared_redis.client(), key, Limits(files_per_s=rate, burst_files=burst))
    sent: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    end = 0.0

    def worker(i: int) -> None:
        limiter = RedisLimiter(shared_redis.client(), key, Limits())
        start.wait()
        while True:
            wait = limiter.reserve()
            if time.monotonic() + wait > end:
                return  # would send after the measurement window
            time.sleep(wait)
            sent[i].append(time.monotonic())

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    end = time.monotonic() + duration
    start.wait()
    for t in pool:
        t.join()

    times = sorted(t for per in sent for t in per)
    expected = rate * duration + burst
    # Never more than the limiter grants; fewer when the threads are scheduled late (two
    # cores shared with other work: a thread may not run for a few hundred ms).
    assert 0.8 * expected <= len(times) <= expected + 2, len(times)
    worst = max(sum(1 for t in times[i:] if t < ti + 1.0) for i, ti in enumerate(times))
    # The limiter grants at most rate + burst in any second (the fake-clock property test
    # proves it exactly); these are the times the threads woke up to send, and a thread
    # woken late moves its slot into the next window: one more burst, as in test_engine.
    assert worst <= rate + 2 * burst, worst
    assert min(len(per) for per in sent) >= len(times) / threads * 0.6, [len(p) for p in sent]


# --- limits -------------------------------------------------------------------------------


def test_set_and_get_limits_round_trip(shared_redis: RedisPeer) -> None:
    """get_limits returns what set_limits stored, unlimited fields included; None if unset."""
    client = shared_redis.client()
    key = _key()
    assert get_limits(client, key) is None
    for limits in (
        Limits(files_per_s=12.5, bytes_per_s=1e6, burst_files=3, burst_bytes=4096),
        Limits(bytes_per_s=10_000_000.0),
        Limits(),
    ):
        set_limits(client, key, limits)
        assert get_limits(client, key) == limits


def test_fallback_applies_until_limits_are_stored(shared_redis: RedisPeer) -> None:
    """Without a conf hash the worker's own limits apply; stored limits then override them."""
    client = shared_redis.client()
    key = _key()
    limiter = RedisLimiter(client, key, Limits(files_per_s=1.0, burst_files=1))
    assert limiter.reserve_at(EPOCH) == 0.0
    assert limiter.reserve_at(EPOCH) == 1.0
    set_limits(client, key, Limits(files_per_s=4.0, burst_files=1))
    # the debt (TAT = EPOCH+2) is kept, the new interval applies from this reservation on
    assert limiter.reserve_at(EPOCH) == 2.0
    assert limiter.reserve_at(EPOCH) == 2.25


def test_changed_limits_apply_to_the_next_reserve(shared_redis: RedisPeer) -> None:
    """Fast -> slow takes effect at once; -> unlimited means no waiting even with debt."""
    client = shared_redis.client()
    key = _key()
    set_limits(client, key, Limits(files_per_s=1000.0, burst_files=100))
    limiter = make_redis_limiter(client, key, Limits())
    assert isinstance(limiter, RateLimiter)
    assert all(limiter.reserve() == 0.0 for _ in range(5))

    set_limits(client, key, Limits(files_per_s=1.0, burst_files=1))
    limiter.reserve()
    # 1 s (+ what is left of the 1000/s reservations) less the time between the two calls
    # (up to 150 ms on a loaded machine); would be 0 at 1000/s
    assert 0.85 <= limiter.reserve() <= 1.05

    set_limits(client, key, Limits())
    assert [limiter.acquire() for _ in range(100)] == [0.0] * 100

    # limits set on an unlimited destination reach a worker within UNLIMITED_CACHE_S
    set_limits(client, key, Limits(files_per_s=1.0, burst_files=1))
    time.sleep(UNLIMITED_CACHE_S + 0.1)
    assert limiter.reserve() > 0.5  # the debt of the slow phase is still owed


def test_unlimited_costs_about_one_round_trip_per_second(shared_redis: RedisPeer) -> None:
    """An unlimited job asks Redis once per UNLIMITED_CACHE_S, not once per file."""
    client = shared_redis.client()
    key = _key()
    set_limits(client, key, Limits())
    limiter = RedisLimiter(client, key, Limits(files_per_s=1.0))
    assert limiter.reserve() == 0.0  # loads the script, learns "unlimited"
    client.config_resetstat()
    for _ in range(10_000):
        assert limiter.reserve(1, 10**9) == 0.0
    calls = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert calls <= 1
    assert client.exists(state_key(key)) == 0  # nothing charged, nothing stored


def test_files_larger_than_the_byte_burst_progress_through_debt(
    shared_redis: RedisPeer,
) -> None:
    """Every file is 3x the byte burst: each is admitted when the bucket is full and the
    next waits its debt off, so the flow is exactly bytes_per_s, never starved."""
    client = shared_redis.client()
    key = _key()
    set_limits(client, key, Limits(bytes_per_s=1_000_000.0, burst_bytes=100_000))
    limiter = RedisLimiter(client, key, Limits())
    t0 = time.monotonic()
    waits = [limiter.reserve(1, 300_000) + (time.monotonic() - t0) for _ in range(5)]
    # Each figure is Redis's wait plus our elapsed time: they differ by the time between
    # Redis's TIME and our clock read, one round trip (0.1 ms idle, tens of ms when the two
    # cores are busy with other work), hence 0.05 s rather than 0.02.
    assert waits == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2], abs=0.05)
    # and in real time: the next file waits off the queue (~1.5 s from t0); a sleep on a
    # loaded machine may overshoot by a scheduler tick or more, hence 0.15 s
    t1 = time.monotonic()
    limiter.acquire(1, 300_000)
    assert time.monotonic() - t1 == pytest.approx(1.5 - (t1 - t0), abs=0.15)


def test_negative_costs_are_rejected(shared_redis: RedisPeer) -> None:
    limiter = RedisLimiter(shared_redis.client(), _key(), Limits(files_per_s=1.0))
    with pytest.raises(ValueError):
        limiter.reserve(-1, 0)


# --- Redis going away ----------------------------------------------------------------------


def test_reserve_works_after_script_flush(shared_redis: RedisPeer) -> None:
    """NOSCRIPT (cache flushed, failover) is answered by reloading the script."""
    client = shared_redis.client()
    key = _key()
    limiter = RedisLimiter(client, key, Limits(files_per_s=2.0, burst_files=1))
    assert limiter.reserve() == 0.0
    client.script_flush()
    assert 0.35 <= limiter.reserve() <= 0.501  # 0.5 s less the time since the first call


def test_reserve_works_after_a_redis_restart(redis_server: RedisPeer) -> None:
    """After a restart without AOF the stored limits and TATs are gone: the worker's fallback
    limits apply from a full bucket (at most one extra burst), the script is reloaded."""
    client = redis_server.client()
    key = _key()
    set_limits(client, key, Limits(files_per_s=1000.0, burst_files=1000))
    limiter = RedisLimiter(client, key, Limits(files_per_s=5.0, burst_files=1))
    assert limiter.reserve() == 0.0
    redis_server.restart()
    assert limiter.reserve() == 0.0
    assert 0.05 <= limiter.reserve() <= 0.201  # 0.2 s less the time since the first call


def test_reserve_waits_out_a_redis_outage(redis_server: RedisPeer) -> None:
    """A reservation made while Redis is down retries until it is back (here ~1 s)."""
    client = redis_server.client()
    key = _key()
    limiter = RedisLimiter(client, key, Limits(files_per_s=5.0, burst_files=1))
    assert limiter.reserve() == 0.0
    port = redis_server.port
    redis_server.stop()
    restarter = threading.Timer(1.0, redis_server.start, kwargs={"port": port})
    restarter.start()
    t0 = time.monotonic()
    try:
        assert limiter.reserve() == 0.0
    finally:
        restarter.join()
    assert time.monotonic() - t0 >= 0.9


def _flaky(failures: int) -> tuple[Callable[[], str], list[int]]:
    calls = [0]

    def call() -> str:
        calls[0] += 1
        if calls[0] <= failures:
            raise redis.ConnectionError("Connection refused")
        return "ok"

    return call, calls


def test_retry_redis_retries_connection_errors_then_gives_up() -> None:
    """Connection errors are retried with backoff until outage_s, then raised."""
    call, calls = _flaky(3)
    assert retry_redis(call, "test", outage_s=5.0) == "ok"
    assert calls[0] == 4
    call, calls = _flaky(10**9)
    t0 = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        retry_redis(call, "test", outage_s=0.3)
    assert 0.3 <= time.monotonic() - t0 < 1.0


def test_retry_redis_does_not_retry_script_errors() -> None:
    def call() -> str:
        raise redis.ResponseError("ERR bad script")

    with pytest.raises(redis.ResponseError):
        retry_redis(call, "test")


def test_keys_share_the_destination_hash_tag() -> None:
    """Conf and state live on one Redis Cluster shard, as a multi-key script requires."""
    key = limiter_key("pacs:104:ORTHANC")
    assert conf_key(key).startswith(key) and state_key(key).startswith(key)
    assert "{pacs:104:ORTHANC}" in key
