"""``MIGRATOR_REDIS_RIDE_OUT``: how long a command or worker retries a lost Redis.

The default (35 s of backoff, 20 retries) is what rides out a Redis restart
(test_engine.py::test_redis_restart_mid_job); it is checked here through the client a
command builds, not by waiting it out. A command against a closed port shows the bound.
"""

from __future__ import annotations

import time

import pytest
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from migrator.redis_client import DEFAULT_RIDE_OUT_S, _backoff, connect, retries_for
from tests.storehelpers import run_migrator


def slept(retries: int) -> float:
    """The backoff sleeps of ``retries`` retries (what connect()'s client waits in all)."""
    backoff = _backoff()
    return sum(backoff.compute(n) for n in range(1, retries + 1))


def client_retries(url: str, *, ride_out: bool = True) -> int:
    retry = connect(url, ride_out=ride_out).connection_pool.connection_kwargs["retry"]
    assert isinstance(retry, Retry)
    return retry.get_retries()


def test_the_default_ride_out_is_20_retries_over_35_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MIGRATOR_REDIS_RIDE_OUT", raising=False)
    assert client_retries("redis://127.0.0.1:1/0") == 20
    assert DEFAULT_RIDE_OUT_S == pytest.approx(slept(20)) == 35.0
    monkeypatch.setenv("MIGRATOR_REDIS_RIDE_OUT", "")  # empty: the default, as unset
    assert client_retries("redis://127.0.0.1:1/0") == 20


@pytest.mark.parametrize("budget", [0.0, 0.1, 0.2, 1.0, 3.0, 10.0, 35.0, 60.0, 600.0])
def test_the_ride_out_is_the_fewest_retries_that_sleep_the_budget(budget: float) -> None:
    retries = retries_for(budget)
    assert slept(retries) >= budget - 1e-9
    if retries:
        assert slept(retries - 1) < budget  # one fewer would give up early
    else:
        assert budget == 0


def test_a_ride_out_of_0_gives_up_at_once_and_run_s_embedded_redis_never_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATOR_REDIS_RIDE_OUT", "0")
    assert client_retries("redis://127.0.0.1:1/0") == 0
    monkeypatch.setenv("MIGRATOR_REDIS_RIDE_OUT", "120")
    assert client_retries("redis://127.0.0.1:1/0", ride_out=False) == 0


def test_a_command_against_a_closed_port_gives_up_after_the_ride_out(free_port: int) -> None:
    """2 s asked for: 4 retries, 0.2 + 0.4 + 0.8 + 1.6 = 3.0 s of sleeps. Upper bound: those
    plus 8 s for interpreter start-up and the refused connects on a loaded 2-core machine
    (the default would take 35 s)."""
    url = f"redis://127.0.0.1:{free_port}/0"  # free: nothing listens, connects are refused
    start = time.monotonic()
    proc = run_migrator("jobs", "--redis-url", url, env={"MIGRATOR_REDIS_RIDE_OUT": "2"})
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cannot reach Redis" in proc.stderr, proc.stderr
    assert slept(retries_for(2.0)) == pytest.approx(3.0)
    assert 3.0 <= elapsed < 3.0 + 8, f"{elapsed:.1f} s"


def _retries_by_summing(ride_out_s: float) -> int:
    """The definition, one sleep at a time (what retries_for computed until it took the
    closed form): only for budgets small enough to count."""
    retries = 0
    while slept(retries) < ride_out_s - 1e-9:
        retries += 1
    return retries


def test_the_closed_form_counts_as_the_sleeps_add_up() -> None:
    budgets = [n / 10 for n in range(0, 1300)] + [2041.0, 2043.0, 2045.0, 3000.5]
    for budget in budgets:
        assert retries_for(budget) == _retries_by_summing(budget), budget


def test_a_long_ride_out_is_counted_at_once() -> None:
    """Counted sleep by sleep it was O(n): 1e8 s took ~50 million steps (1e9: a hang)."""
    start = time.monotonic()
    assert retries_for(86400.0) == 4 + 43_199  # 3.0 s in 4 doubling sleeps, then 2 s each
    assert retries_for(1e8) == 4 + 49_999_999
    assert time.monotonic() - start < 0.5  # (a closed form: microseconds, even loaded)


def test_the_backoff_never_overflows_on_an_older_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    """Older redis-py (>= 5 is allowed) computes ``base * 2**failures`` as is: an
    OverflowError from the 1,024th failure (a ride-out of ~2,043 s), mid-outage."""

    def as_older_redis_py(self: ExponentialBackoff, failures: int) -> float:
        return min(self._cap, self._base * 2**failures)

    monkeypatch.setattr(ExponentialBackoff, "compute", as_older_redis_py)
    with pytest.raises(OverflowError):  # (the monkeypatch is what it says)
        ExponentialBackoff(cap=2.0, base=0.1).compute(1024)
    assert [_backoff().compute(n) for n in (1, 4, 5, 1024, 43_203, 10**9)] == [
        0.2,
        1.6,
        2.0,
        2.0,
        2.0,
        2.0,
    ]


def test_a_ride_out_up_to_a_day_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATOR_REDIS_RIDE_OUT", "86400")
    assert client_retries("redis://127.0.0.1:1/0") == 43_203


@pytest.mark.parametrize("value", ["86401", "1e9"])
def test_a_ride_out_over_a_day_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the process (the exit-2 path is the same as the other bad values' below)."""
    from migrator.env import redis_ride_out
    from migrator.errors import ConfigError

    monkeypatch.setenv("MIGRATOR_REDIS_RIDE_OUT", value)
    with pytest.raises(
        ConfigError, match="MIGRATOR_REDIS_RIDE_OUT must be a number of seconds from 0 to 86400"
    ):
        redis_ride_out(35.0)


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "1e999", "1e9"])
def test_a_bad_ride_out_is_refused_naming_the_variable(value: str) -> None:
    proc = run_migrator(
        "jobs", "--redis-url", "redis://127.0.0.1:1/0", env={"MIGRATOR_REDIS_RIDE_OUT": value}
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "MIGRATOR_REDIS_RIDE_OUT must be a number of seconds" in proc.stderr, proc.stderr
    assert "cannot reach Redis" not in proc.stderr  # refused before any connect
