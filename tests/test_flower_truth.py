"""Flower shows the truth: a batch with failed files is a FAILURE (its exception says how
many), `run`'s own inline batches are listed, and `migrator flower --state-dir` attaches to
a job on the embedded default.

Real Flower (`migrator flower`), real redis-server (embedded and a cluster's), real Celery
workers; a counting SCP refuses chosen files with 0xA900. Batches are cut every 5 files in
plan order (000000.dcm …), so file k is in batch ``b{k // 5 + 1:07d}``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from migrator import synth
from migrator.commands.flower import STOP_GRACE
from migrator.embedded.server import EmbeddedRedis
from migrator.netutil import free_port
from tests.enginehelpers import common_args, finish, start_run, wait_until
from tests.peers.counting_scp import counting_scp
from tests.peers.redis import RedisPeer
from tests.storehelpers import sop_uid

pytestmark = pytest.mark.timeout(240)

AUTH = ("admin", "flower-truth")


class Flower:
    def __init__(self, base: str) -> None:
        self.base = base

    def tasks(self, **params: str) -> dict[str, dict[str, Any]]:
        r = requests.get(f"{self.base}/api/tasks", params=params, auth=AUTH, timeout=10)
        r.raise_for_status()
        tasks: dict[str, dict[str, Any]] = r.json()
        return tasks


@contextmanager
def flower(tmp_path: Path, *where: str) -> Iterator[Flower]:
    """`migrator flower` with basic auth on a free port, up (its /healthcheck answers)."""
    port = free_port()
    log = tmp_path / f"flower-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrator", "flower", *where, "--port", str(port)],
        env={**os.environ, "MIGRATOR_FLOWER_BASIC_AUTH": ":".join(AUTH)},
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115 - closed with the child
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(f"{base}/healthcheck", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(up, 30, "Flower")
        yield Flower(base)
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in log.read_text()
    assert AUTH[1] not in log.read_text()


def _batch(k: int) -> str:
    return f"b{k // 5 + 1:07d}"


def test_flower_attaches_to_an_embedded_run_and_lists_failed_batches_as_failure(
    tmp_path: Path,
) -> None:
    files = synth.write_corpus(tmp_path / "in", count=40, size="tiny", seed=2201)
    refused = [27, 28]  # both in batch 6: sent by the worker ~12 s in, Flower long up
    state = tmp_path / "state"
    with counting_scp() as scp:
        scp.fail_uids = {sop_uid(files[k]): 0xA900 for k in refused}
        proc = start_run(
            tmp_path / "in",
            *common_args(("127.0.0.1", scp.port), "COUNTING"),
            *("--state-dir", state, "--workers", "1", "--batch-files", "5"),
            *("--rate-limit", "2", "--burst", "1"),
        )
        try:
            # Flower can attach once the run's embedded Redis is up and published.
            wait_until(lambda: (state / "embedded.json").exists(), 60, "the run's Redis")
            with flower(tmp_path, "--state-dir", str(state)) as view:
                wait_until(lambda: bool(view.tasks(state="FAILURE")), 90, "a FAILURE in Flower")
                failed = view.tasks(state="FAILURE")
                # Flower's search box (it matches a task's name, args, result...): the job id
                job = next(iter(failed)).removeprefix("inline:").split(":")[0]
                searched = view.tasks(state="FAILURE", search=job)
                wait_until(lambda: proc.poll() is not None, 90, "the end of the run")
                succeeded = view.tasks(state="SUCCESS")
            code, out = finish(proc)
        finally:
            proc.kill()
    assert code == 1, out
    [(uuid, task)] = failed.items()
    # (Sent by the worker; by run itself only if the worker took over 5 s to boot.)
    assert uuid.removeprefix("inline:") == f"{job}:{_batch(refused[0])}", failed
    assert task["name"] == "migrator.store_batch"
    assert "BatchFailed" in task["exception"] and "2 failed files of 5 sent" in task["exception"]
    assert set(searched) == {uuid}
    # An expected end for the worker: no error and no traceback in its log (Celery logs a
    # task's declared `throws` at INFO, one line).
    log = (state / "workers.log").read_text()
    assert "Traceback" not in log and "BatchFailed" not in log, log[-3000:]
    # The batches the worker sent while Flower watched, every other one a SUCCESS.
    assert succeeded and uuid not in succeeded
    # (A batch already received when Flower attached shows without its name: Flower saw
    # only its later events.)
    # (run's own first batch, rate-limited, may end after Flower attached: listed too.)
    assert all(u.startswith((f"{job}:b", f"inline:{job}:b")) for u in succeeded), succeeded


def test_flower_lists_the_batches_run_sends_itself(tmp_path: Path, redis_server: RedisPeer) -> None:
    """`run` with local workers sends the last batches itself while they boot: Flower shows
    them, as `migrator-run@host`, a batch with a refused file as a FAILURE."""
    files = synth.write_corpus(tmp_path / "in", count=20, size="tiny", seed=2202)
    with flower(tmp_path, "--redis-url", redis_server.url) as view, counting_scp() as scp:
        scp.fail_uids = {sop_uid(files[-1]): 0xA900}  # the last batch: run's first
        dest = common_args(("127.0.0.1", scp.port), "COUNTING")
        code, out = finish(
            start_run(
                tmp_path / "in",
                *dest,
                *("--redis-url", redis_server.url, "--workers", "1", "--batch-files", "5"),
            )
        )
        assert code == 1, out
        inline: dict[str, dict[str, Any]] = {}

        def listed() -> bool:
            inline.update({u: t for u, t in view.tasks().items() if u.startswith("inline:")})
            return any(t["state"] == "FAILURE" for t in inline.values())

        wait_until(listed, 30, "run's own batches in Flower")
    last = f"{_batch(len(files) - 1)}"
    [failure] = [u for u, t in inline.items() if t["state"] == "FAILURE"]
    assert failure.startswith("inline:job-") and failure.endswith(f":{last}"), inline
    task = inline[failure]
    assert task["name"] == "migrator.store_batch" and task["worker"].startswith("migrator-run@")
    assert "1 failed files of 5 sent" in task["exception"]
    assert all(t["state"] in ("SUCCESS", "FAILURE") for t in inline.values())


def test_flower_stops_on_sigterm_while_its_redis_answers_nothing(tmp_path: Path) -> None:
    """Seen under stress-ng: Flower, asked to stop just as the run it watched ended, was
    still there 20 minutes later (its exit waits for its calls to the broker). Here its
    Redis answers nothing (stopped with SIGSTOP, as a host cut off) while Flower asks the
    workers for their state: `migrator flower` still stops, within its grace of 5 s."""
    with EmbeddedRedis() as redis:
        try:
            started = 0.0
            with flower(tmp_path, "--redis-url", redis.url) as view:
                os.kill(redis.pid, signal.SIGSTOP)
                with pytest.raises(requests.Timeout):  # Flower is stuck in the broker call
                    requests.get(
                        f"{view.base}/api/workers", params={"refresh": "1"}, auth=AUTH, timeout=2
                    )
                started = time.monotonic()
            stopped_in = time.monotonic() - started  # the helper sent SIGTERM and waited
        finally:
            os.kill(redis.pid, signal.SIGCONT)
    assert stopped_in < STOP_GRACE + 4, stopped_in
    log = next(tmp_path.glob("flower-*.log")).read_text()
    assert "Flower did not stop within 5 s" in log, log[-2000:]
