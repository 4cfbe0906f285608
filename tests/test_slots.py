"""Fleet-wide association slots against a real redis-server: the cap holds under
concurrency, leases expire, timeouts are transient connect errors."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from migrator.errors import ConnectError, TransientError
from migrator.keys import slots_key
from migrator.limits import slots as slots_module
from migrator.limits.slots import AssociationSlots, SlotTimeout
from migrator.netutil import free_port
from tests.peers.redis import RedisPeer, redis_peer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisPeer]:
    """One server for the module (each test uses its own key): a stopped server's exit is
    seen ~2 s late here, which per test would dominate the runtime."""
    with redis_peer(tmp_path_factory.mktemp("redis")) as peer:
        yield peer


def _key() -> str:
    return slots_key(f"pacs-{uuid.uuid4().hex[:8]}:104:ORTHANC")


def test_never_more_than_limit_held_by_four_threads(shared_redis: RedisPeer) -> None:
    """limit 2, 4 threads acquiring, holding and releasing for ~1.5 s: at most 2 holders at
    any moment (own counter and held()), the cap is reached, and every thread gets a turn."""
    key = _key()
    lock = threading.Lock()
    holding = 0
    peak = 0
    held_seen: list[int] = []
    turns = [0] * 4
    end = time.monotonic() + 1.5

    def worker(i: int) -> None:
        nonlocal holding, peak
        slots = AssociationSlots(shared_redis.client(), key, 2, lease_seconds=5.0)
        while time.monotonic() < end:
            token = slots.acquire(timeout=5.0)
            with lock:
                holding += 1
                peak = max(peak, holding)
            held_seen.append(slots.held())
            time.sleep(random.uniform(0.01, 0.05))
            with lock:
                holding -= 1  # before release: a new holder may start right after it
            slots.release(token)
            turns[i] += 1
            # Between associations a worker does other work. Without this pause the releaser
            # re-acquires before the pollers wake: the semaphore is not FIFO (slots.py).
            time.sleep(random.uniform(0.05, 0.1))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2
    assert max(held_seen) == 2
    assert min(turns) >= 1, turns
    assert AssociationSlots(shared_redis.client(), key, 2).held() == 0


def test_unrefreshed_lease_expires_and_its_slot_is_reused(shared_redis: RedisPeer) -> None:
    """A holder that dies (never refreshes nor releases) frees its slot after lease_seconds;
    its token is then lost for good."""
    key = _key()
    slots = AssociationSlots(shared_redis.client(), key, 1, lease_seconds=1.0)
    dead = slots.acquire(timeout=1.0)
    t0 = time.monotonic()
    token = slots.acquire(timeout=3.0)
    # the lease's second, then the next poll (50-100 ms); up to the timeout when the two
    # cores are busy with other work (a poll can be scheduled a second late)
    assert 0.9 <= time.monotonic() - t0 <= 3.0
    assert token != dead
    assert slots.held() == 1
    assert slots.refresh(dead) is False
    assert slots.refresh(token) is True


def test_refreshed_lease_is_kept(shared_redis: RedisPeer) -> None:
    """Refreshing more often than lease_seconds keeps the slot past its first expiry."""
    key = _key()
    # refreshed every 0.3 s for 1.2 s, past the 1-s lease: a refresh may come up to 0.7 s
    # late on a loaded machine and still be in time
    slots = AssociationSlots(shared_redis.client(), key, 1, lease_seconds=1.0)
    token = slots.acquire(timeout=1.0)
    for _ in range(4):
        time.sleep(0.3)
        assert slots.refresh(token) is True
    with pytest.raises(SlotTimeout):
        slots.acquire(timeout=0.1)
    slots.release(token)
    assert slots.held() == 0
    assert slots.refresh(token) is False


def test_acquire_timeout_is_a_transient_connect_error(shared_redis: RedisPeer) -> None:
    """SlotTimeout is a ConnectError, so callers retry it like a busy PACS."""
    key = _key()
    slots = AssociationSlots(shared_redis.client(), key, 1)
    slots.acquire(timeout=0)
    t0 = time.monotonic()
    with pytest.raises(ConnectError) as info:
        slots.acquire(timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 1.5  # the timeout, + a late poll under load
    assert isinstance(info.value, SlotTimeout)
    assert isinstance(info.value, TransientError)
    assert key in str(info.value)


def test_a_waiter_polls_every_50_to_100_ms(
    shared_redis: RedisPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pauses between a waiter's attempts: jittered between POLL_MIN_S and POLL_MAX_S
    (a freed slot is taken within ~0.1 s), the last one cut to what is left of the
    timeout. Measured as asked of sleep(), not by the clock: exact on a loaded machine."""
    key = _key()
    holder = AssociationSlots(shared_redis.client(), key, 1)
    holder.acquire(timeout=0)
    pauses: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(slots_module.time, "sleep", sleep)
    with pytest.raises(SlotTimeout):
        AssociationSlots(shared_redis.client(), key, 1).acquire(timeout=0.6)
    monkeypatch.undo()
    assert len(pauses) >= 3, pauses
    assert all(0.05 <= p <= 0.1 for p in pauses[:-1]), pauses
    assert 0 < pauses[-1] <= 0.1, pauses


def test_release_frees_the_slot_at_once(shared_redis: RedisPeer) -> None:
    key = _key()
    slots = AssociationSlots(shared_redis.client(), key, 1, lease_seconds=60.0)
    token = slots.acquire(timeout=0)
    slots.release(token)
    slots.release(token)  # twice is harmless
    assert slots.acquire(timeout=0)


def test_each_caller_applies_its_own_limit(shared_redis: RedisPeer) -> None:
    """The limit is per call: a caller with limit 3 admits while 2 are held, one with limit 2
    does not."""
    key = _key()
    client = shared_redis.client()
    two = AssociationSlots(client, key, 2)
    three = AssociationSlots(client, key, 3)
    two.acquire(timeout=0)
    two.acquire(timeout=0)
    assert two.try_acquire() is None
    assert three.try_acquire() is not None
    assert three.try_acquire() is None
    assert two.held() == three.held() == 3


def test_key_vanishes_after_the_last_lease(shared_redis: RedisPeer) -> None:
    """An idle destination leaves no key behind."""
    key = _key()
    client = shared_redis.client()
    slots = AssociationSlots(client, key, 2, lease_seconds=1.0)
    slots.acquire(timeout=0)
    assert 1000 < client.pttl(key) <= 2000


def test_the_key_lives_as_long_as_its_longest_lease(shared_redis: RedisPeer) -> None:
    """A short lease taken after a long one must not shorten the key's life: the long
    lease (another worker's association) is still counted once the short one is gone."""
    key = _key()
    client = shared_redis.client()
    long_ = AssociationSlots(client, key, 2, lease_seconds=30.0)
    short = AssociationSlots(client, key, 2, lease_seconds=0.2)
    token = long_.acquire(timeout=0)
    short.acquire(timeout=0)
    assert 29_000 < client.pttl(key) <= 31_000
    time.sleep(1.5)  # the short lease and a second more: gone
    assert long_.held() == 1
    assert long_.refresh(token) is True


def test_bad_arguments_are_rejected(shared_redis: RedisPeer) -> None:
    client = shared_redis.client()
    with pytest.raises(ValueError):
        AssociationSlots(client, _key(), 0)
    with pytest.raises(ValueError):
        AssociationSlots(client, _key(), 1, lease_seconds=0)
    for limit in (True, 2.0, "2"):  # a bool is an int to Python, not a number of slots
        with pytest.raises(ValueError, match="whole number"):
            AssociationSlots(client, _key(), limit)  # type: ignore[arg-type]


def test_the_lease_is_30_s_unless_told_and_kept_to_the_millisecond(
    shared_redis: RedisPeer,
) -> None:
    client = shared_redis.client()
    assert AssociationSlots(client, _key(), 1).lease_seconds == 30.0
    key = _key()
    slots = AssociationSlots(client, key, 1, lease_seconds=2.5)
    assert slots.lease_seconds == 2.5
    token = slots.acquire(timeout=0)
    score = client.zscore(key, token)
    now_ms = int(client.time()[0]) * 1000 + int(client.time()[1]) // 1000
    assert score is not None and 2400 <= score - now_ms <= 2500


def test_a_waiter_marks_the_slots_wanted_and_a_mere_try_does_not(
    shared_redis: RedisPeer,
) -> None:
    """``wanted()``: a sender waited for a slot in the last 2 s (the holders of idle
    associations then give them back between batches); one that only tried (timeout 0,
    -j auto growing) does not count; without a wanted key, never."""
    client = shared_redis.client()
    key, wanted_key = _key(), _key() + ":wanted"
    holder = AssociationSlots(client, key, 1, wanted_key=wanted_key)
    holder.acquire(timeout=0)
    assert not holder.wanted()
    with pytest.raises(SlotTimeout):
        holder.acquire(timeout=0)
    assert not holder.wanted()
    with pytest.raises(SlotTimeout):
        AssociationSlots(client, key, 1, wanted_key=wanted_key).acquire(timeout=0.1)
    assert holder.wanted()
    assert 1000 < client.pttl(wanted_key) <= 2000
    assert not AssociationSlots(client, key, 1).wanted()


def test_a_waiter_that_cannot_reach_redis_says_so_once_and_in_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    slots = AssociationSlots(dead, _key(), 1)
    refused = pytest.raises(SlotTimeout, match=r"stayed busy for 0.3 s \(redis: .*refused")
    with caplog.at_level("WARNING", logger="migrator.limits.slots"), refused:
        slots.acquire(timeout=0.3)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "redis unreachable while waiting" in warnings[0], warnings


def test_acquire_survives_a_redis_restart(redis_server: RedisPeer) -> None:
    """While Redis is down acquire keeps polling; it succeeds once Redis is back."""
    key = _key()
    slots = AssociationSlots(redis_server.client(), key, 1)
    port = redis_server.port
    redis_server.stop()
    restarter = threading.Timer(0.5, redis_server.start, kwargs={"port": port})
    restarter.start()
    try:
        token = slots.acquire(timeout=20.0)
    finally:
        restarter.join()
    assert slots.refresh(token) is True
    assert slots.held() == 1
