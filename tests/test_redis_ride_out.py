"""``MIGRATOR_REDIS_RIDE_OUT``: how long a command or worker retries a lost Redis.

The default (35 s of backoff, 20 retries) is what rides out a Redis restart
(test_engine.py::test_redis_restart_mid_job); it is checked here through the client a
command builds, not by waiting it out. A command against a closed port shows the bound.
"""

from __future__ import annotations

import time

import pytest
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


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "1e999"])
def test_a_bad_ride_out_is_refused_naming_the_variable(value: str) -> None:
    proc = run_migrator(
        "jobs", "--redis-url", "redis://127.0.0.1:1/0", env={"MIGRATOR_REDIS_RIDE_OUT": value}
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "MIGRATOR_REDIS_RIDE_OUT must be a number of seconds" in proc.stderr, proc.stderr
    assert "cannot reach Redis" not in proc.stderr  # refused before any connect
