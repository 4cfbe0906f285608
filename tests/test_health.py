"""`migrator check-health`: 0 while a real worker's heartbeat is fresh, non-zero within the
heartbeat's TTL once the worker is killed (kill -9: nothing cleans up), at once after a clean
shutdown (the worker deletes its key); 3 when Redis cannot be reached, 2 for a bad URL."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator.errors import ConfigError
from migrator.netutil import free_port
from tests.peers.redis import RedisPeer
from workers import heartbeat

pytestmark = pytest.mark.timeout(120)

MIGRATOR = [sys.executable, "-m", "migrator"]


def check_health(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIGRATOR, "check-health", "--redis-url", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


class Worker:
    """`migrator worker` as a user starts it, in its own session."""

    def __init__(self, url: str, tmp: Path, **env: str) -> None:
        self.log = tmp / "worker.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*MIGRATOR, "worker", "--redis-url", url, "-c", "1"],
            env={**os.environ, "TMPDIR": str(tmp), **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_alive(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            if check_health(url).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("check-health never passed:\n" + self.output())

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        self._out.close()


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.stop()


def test_live_worker_passes_and_a_killed_one_fails_within_the_ttl(
    redis_server: RedisPeer, tmp_path: Path, worker_factory: list[Worker]
) -> None:
    ttl = 3.0
    worker = Worker(redis_server.url, tmp_path, MIGRATOR_HEARTBEAT_TTL=str(ttl))
    worker_factory.append(worker)
    worker.wait_alive(redis_server.url)

    ok = check_health(redis_server.url)
    assert ok.returncode == 0, ok.stderr
    assert "alive" in ok.stdout
    node = heartbeat.default_node()
    beat = json.loads(redis_server.client().get(heartbeat.key(node)) or b"{}")
    assert beat["pid"] == worker.proc.pid  # celery is the process we started (exec)
    assert 0 < redis_server.client().pttl(heartbeat.key(node)) <= ttl * 1000
    # The key is renewed: still alive after more than one TTL.
    time.sleep(ttl + 0.5)
    assert check_health(redis_server.url).returncode == 0, worker.output()

    worker.kill()  # SIGKILL to the whole worker: no shutdown code runs
    killed = time.monotonic()
    while True:
        started = time.monotonic() - killed
        result = check_health(redis_server.url)
        if result.returncode != 0:
            break
        assert started < ttl + 5, "check-health still passes long after the TTL"
    assert result.returncode == 1, result.stderr
    assert "no heartbeat" in result.stderr
    assert started <= ttl, f"first failing check started {started:.2f} s after the kill"


def test_clean_shutdown_removes_the_heartbeat_at_once(
    redis_server: RedisPeer, tmp_path: Path, worker_factory: list[Worker]
) -> None:
    worker = Worker(
        redis_server.url, tmp_path, MIGRATOR_HEARTBEAT_TTL="60", MIGRATOR_SOFT_SHUTDOWN="0.5"
    )
    worker_factory.append(worker)
    worker.wait_alive(redis_server.url)
    os.kill(worker.proc.pid, signal.SIGTERM)  # what `docker stop` / the kubelet send
    worker.proc.wait(timeout=30)
    result = check_health(redis_server.url)
    assert result.returncode == 1, result.stdout
    assert redis_server.client().exists(heartbeat.key(heartbeat.default_node())) == 0


def test_worker_option_names_another_node(redis_server: RedisPeer) -> None:
    beater = heartbeat.Beater(redis_server.client(), "celery@elsewhere", 5.0)
    assert beater.beat()
    assert check_health(redis_server.url, "--worker", "celery@elsewhere").returncode == 0
    assert check_health(redis_server.url).returncode == 1  # not this host's worker
    beater.clear()
    assert check_health(redis_server.url, "--worker", "celery@elsewhere").returncode == 1


def test_unreachable_redis_and_bad_url() -> None:
    started = time.monotonic()
    down = check_health(f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 3, down.stderr
    assert "cannot read the heartbeat" in down.stderr
    assert time.monotonic() - started < 10  # a probe's timeout, not a hang
    bad = check_health("http://example.invalid/0")
    assert bad.returncode == 2, bad.stderr


def test_beater_survives_a_redis_outage(
    redis_server: RedisPeer, caplog: pytest.LogCaptureFixture
) -> None:
    gone = heartbeat.client(f"redis://127.0.0.1:{free_port()}/0")
    beater = heartbeat.Beater(gone, "celery@x", 3.0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="workers.heartbeat"):
        assert not beater.beat()
        assert not beater.beat()
    assert time.monotonic() - started < 2 * heartbeat.SOCKET_TIMEOUT  # no retry loop
    assert len([r for r in caplog.records if "cannot write" in r.message]) == 1  # once
    beater.conn = redis_server.client()
    assert beater.beat() and not beater.failing
    assert beater.interval == 1.0


def test_ttl_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(heartbeat.TTL_ENV, raising=False)
    assert heartbeat.ttl_from_env() == heartbeat.DEFAULT_TTL
    monkeypatch.setenv(heartbeat.TTL_ENV, "12.5")
    assert heartbeat.ttl_from_env() == 12.5
    for bad in ("soon", "0.5", "-3"):
        monkeypatch.setenv(heartbeat.TTL_ENV, bad)
        with pytest.raises(ConfigError):
            heartbeat.ttl_from_env()


def test_heartbeat_step_is_installed_on_the_worker_app() -> None:
    from workers.app import app

    assert heartbeat.Heartbeat in app.steps["consumer"]
